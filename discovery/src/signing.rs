//! What a node says about itself in gossip (its facts, its leave) is signed with its own
//! key, so a holder of the gossip key who is not that node cannot forge it.
//!
//! The node id is the hash of the node's public key ([`shoal_secret::node_id_of_public_key`]),
//! so a signed message is self-certifying: it carries the public key, the receiver checks
//! that the key hashes to the node the message is about and that the signature verifies.
//! No directory of keys is needed, and a node that has not joined yet can be checked too.
//!
//! The core takes the scheme as a port ([`Signatures`]): [`P256Signatures`] for real
//! nodes (ECDSA P-256, the key of `node.key`, verified with `ring`), [`KeyedHashSignatures`]
//! for the simulator, whose node ids are not key hashes (it checks the same rules, it is not
//! cryptography). Both make every rule of the core run the same way.

use serde::{Deserialize, Serialize};
use shoal_wire::NodeId;
use std::fmt;
use std::sync::Arc;

/// Longest public key carried (an uncompressed P-256 point is 65 bytes).
pub const MAX_PUBLIC_KEY_LEN: usize = 65;
/// Longest signature carried (a fixed-size P-256 ECDSA signature is 64 bytes).
pub const MAX_SIGNATURE_LEN: usize = 64;

/// What the signature covers besides the body: one context per kind of message, so a
/// signature over one kind can never be passed off as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Facts,
    Leave,
}

impl Context {
    fn prefix(self) -> &'static [u8] {
        match self {
            Self::Facts => b"shoal gossip facts v1\0",
            Self::Leave => b"shoal gossip leave v1\0",
        }
    }

    /// The bytes that are signed: the context, then the body.
    pub fn message(self, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.prefix().len() + body.len());
        m.extend_from_slice(self.prefix());
        m.extend_from_slice(body);
        m
    }
}

/// A body (the encoded facts or identity) with the signer's public key and signature.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub body: Vec<u8>,
    pub key: Vec<u8>,
    pub sig: Vec<u8>,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed").field("body_len", &self.body.len()).field("key_len", &self.key.len()).finish_non_exhaustive()
    }
}

/// The signature scheme of gossip: this node's signing half and everyone's checking half.
pub trait Signatures: Send + Sync {
    /// This node's public key, as carried in what it signs.
    fn public_key(&self) -> &[u8];
    /// Signs `message` with this node's key.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
    /// Whether `key` belongs to `node` and signed `message` as `sig`.
    fn verify(&self, node: NodeId, key: &[u8], message: &[u8], sig: &[u8]) -> bool;
}

/// A shared handle on the scheme (the core and foca's broadcast handler both check).
pub type SharedSignatures = Arc<dyn Signatures>;

/// Signs `body` in `context` with this node's key.
pub fn sign(sigs: &dyn Signatures, context: Context, body: Vec<u8>) -> Signed {
    let sig = sigs.sign(&context.message(&body));
    Signed { body, key: sigs.public_key().to_vec(), sig }
}

/// Whether `signed` was signed in `context` by `node`'s own key (bounds checked first).
pub fn verify(sigs: &dyn Signatures, context: Context, node: NodeId, signed: &Signed) -> bool {
    signed.key.len() <= MAX_PUBLIC_KEY_LEN
        && signed.sig.len() <= MAX_SIGNATURE_LEN
        && sigs.verify(node, &signed.key, &context.message(&signed.body), &signed.sig)
}

/// Why a node key could not be used for gossip.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the node key is not a P-256 PKCS#8 key ({0}); move node.key away to make a new identity")]
    Rejected(String),
}

/// The real scheme: ECDSA P-256 with SHA-256 (the node key of `node.key`), via `ring`.
pub struct P256Signatures {
    key: ring::signature::EcdsaKeyPair,
    public: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

impl P256Signatures {
    /// From the node key's PKCS#8 DER (what `rcgen::KeyPair::serialize_der` gives).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        let public = key.public_key().as_ref().to_vec();
        Ok(Self { key, public, rng })
    }

    /// The node id this key signs as.
    pub fn node_id(&self) -> NodeId {
        shoal_secret::node_id_of_public_key(&self.public)
    }
}

impl Signatures for P256Signatures {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        // ring fails only when its system randomness does; an empty signature is then
        // refused by every receiver, which is the safe outcome.
        match self.key.sign(&self.rng, message) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(_) => {
                tracing::error!("could not sign gossip: the system's random source failed");
                Vec::new()
            }
        }
    }

    fn verify(&self, node: NodeId, key: &[u8], message: &[u8], sig: &[u8]) -> bool {
        shoal_secret::node_id_of_public_key(key) == node
            && ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key)
                .verify(message, sig)
                .is_ok()
    }
}

/// The simulator's scheme: the "public key" is the node id and the "signature" a SHA-256
/// of a per-cluster key, the node id and the message. It checks the same rules as the real
/// one (the key must be the node's, the signature must match the message) without P-256,
/// so simulated node ids need not be key hashes and runs stay deterministic. Anyone who
/// knows the cluster key can forge it: never use it outside the simulator and tests.
pub struct KeyedHashSignatures {
    cluster_key: [u8; 32],
    node: NodeId,
}

impl KeyedHashSignatures {
    pub fn new(cluster_key: [u8; 32], node: NodeId) -> Self {
        Self { cluster_key, node }
    }

    fn digest(&self, node: NodeId, message: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.cluster_key);
        h.update(node.0);
        h.update(message);
        h.finalize().to_vec()
    }
}

impl Signatures for KeyedHashSignatures {
    fn public_key(&self) -> &[u8] {
        &self.node.0
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.digest(self.node, message)
    }

    fn verify(&self, node: NodeId, key: &[u8], message: &[u8], sig: &[u8]) -> bool {
        key == node.0 && sig == self.digest(node, message).as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p256() -> P256Signatures {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("key");
        P256Signatures::from_pkcs8(pkcs8.as_ref()).expect("parse")
    }

    fn schemes() -> Vec<(Box<dyn Signatures>, Box<dyn Signatures>, NodeId, NodeId)> {
        let (a, b) = (p256(), p256());
        let (ida, idb) = (a.node_id(), b.node_id());
        vec![
            (Box::new(a), Box::new(b), ida, idb),
            (
                Box::new(KeyedHashSignatures::new([3; 32], NodeId([1; 16]))),
                Box::new(KeyedHashSignatures::new([3; 32], NodeId([2; 16]))),
                NodeId([1; 16]),
                NodeId([2; 16]),
            ),
        ]
    }

    #[test]
    fn only_the_nodes_own_key_signs_for_it_and_only_in_its_context() {
        for (a, b, ida, idb) in schemes() {
            let signed = sign(a.as_ref(), Context::Facts, b"facts of a".to_vec());
            assert!(verify(b.as_ref(), Context::Facts, ida, &signed), "anyone checks a's own word");
            // b signs something about a: its key is not a's.
            let forged = sign(b.as_ref(), Context::Facts, b"facts of a".to_vec());
            assert!(!verify(a.as_ref(), Context::Facts, ida, &forged));
            // ... and putting a's key beside b's signature does not help.
            let borrowed = Signed { key: a.public_key().to_vec(), ..forged.clone() };
            assert!(!verify(a.as_ref(), Context::Facts, ida, &borrowed));
            assert!(verify(a.as_ref(), Context::Facts, idb, &forged), "b may speak for itself");
            // A changed body, another context, oversized fields: refused.
            let changed = Signed { body: b"facts of A".to_vec(), ..signed.clone() };
            assert!(!verify(b.as_ref(), Context::Facts, ida, &changed));
            assert!(!verify(b.as_ref(), Context::Leave, ida, &signed));
            let long = Signed { sig: vec![0; MAX_SIGNATURE_LEN + 1], ..signed.clone() };
            assert!(!verify(b.as_ref(), Context::Facts, ida, &long));
            let empty = Signed { key: Vec::new(), sig: Vec::new(), ..signed };
            assert!(!verify(b.as_ref(), Context::Facts, ida, &empty));
        }
    }

    #[test]
    fn a_p256_signature_fits_the_bounds_and_the_node_id_is_the_key_hash() {
        let a = p256();
        let signed = sign(&a, Context::Leave, vec![1, 2, 3]);
        assert_eq!(signed.key.len(), MAX_PUBLIC_KEY_LEN);
        assert_eq!(signed.sig.len(), MAX_SIGNATURE_LEN);
        assert_eq!(a.node_id(), shoal_secret::node_id_of_public_key(&signed.key));
        assert!(P256Signatures::from_pkcs8(b"not a key").is_err());
    }
}
