//! The node's persistent identity in its data dir: a key pair (`node.key`, PEM, mode 0600),
//! the node id derived from its public key, and a boot counter that makes every restart a
//! newer gossip generation.

use anyhow::{bail, Context, Result};
use shoal_wire::NodeId;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const KEY_FILE: &str = "node.key";
const BOOT_FILE: &str = "boot_count";

/// What a node is, loaded (or created on first start) from its data dir.
pub struct NodeIdentity {
    pub id: NodeId,
    /// How many times an agent has started with this data dir, this start included.
    pub boot_count: u16,
    /// The key pair, PEM-encoded; the certificate work builds on it.
    #[allow(dead_code)]
    pub key_pem: String,
    boot_path: PathBuf,
}

/// Where state lives when `--data-dir` is not given: `$XDG_DATA_HOME/shoal`,
/// `$HOME/.local/share/shoal`, or `/var/lib/shoal` for a service without a home.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("shoal");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/shoal");
    }
    PathBuf::from("/var/lib/shoal")
}

/// Writes `data` to `path` so that a crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        let context = || format!("cannot write {}", tmp.display());
        f.set_permissions(fs::Permissions::from_mode(mode)).with_context(context)?;
        f.write_all(data).with_context(context)?;
        f.sync_all().with_context(context)?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Creates the data dir (mode 0700) if it is missing; refuses one that other users can write.
pub fn ensure_data_dir(data_dir: &Path) -> Result<()> {
    if data_dir.exists() {
        let mode = fs::metadata(data_dir)
            .with_context(|| format!("cannot read data dir {}", data_dir.display()))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            bail!(
                "data dir {} is writable by other users (mode {:o}); use a private directory, e.g. --data-dir ~/.local/share/shoal",
                data_dir.display(),
                mode & 0o777
            );
        }
    } else {
        fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set permissions on {}", data_dir.display()))?;
    }
    Ok(())
}

impl NodeIdentity {
    /// What this node signs its gossip (facts, leave) with: its own key, whose hash is its id.
    pub fn gossip_signatures(&self) -> Result<shoal_discovery::SharedSignatures> {
        let key = rcgen::KeyPair::from_pem(&self.key_pem).context("the node key cannot be read")?;
        let sigs = shoal_discovery::P256Signatures::from_pkcs8(&key.serialize_der())?;
        if sigs.node_id() != self.id {
            bail!("the node key does not match node id {}; move node.key and boot_count away to make a fresh identity", self.id);
        }
        Ok(std::sync::Arc::new(sigs))
    }

    /// Loads the identity, creating the data dir and key on first start. The boot is counted
    /// by [`Self::count_boot`] once the node has its ports, so failed starts do not use up
    /// generations.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        ensure_data_dir(data_dir)?;
        let key_path = data_dir.join(KEY_FILE);
        let key_pem = if key_path.exists() {
            fs::read_to_string(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?
        } else {
            let key = rcgen::KeyPair::generate().context("cannot generate the node key pair")?;
            let pem = key.serialize_pem();
            write_atomic(&key_path, pem.as_bytes(), 0o600)?;
            tracing::info!(path = %key_path.display(), "created node key");
            pem
        };
        let key = rcgen::KeyPair::from_pem(&key_pem).with_context(|| {
            format!("{} is not a valid key; move it away to let shoal create a new identity", key_path.display())
        })?;
        let boot_path = data_dir.join(BOOT_FILE);
        // A fresh identity is the remedy for a damaged counter: restarting the count under the
        // same id would make the cluster treat this node's new generations as stale.
        let fresh_identity = format!(
            "move {} and {} away together to give this node a fresh identity",
            key_path.display(),
            boot_path.display()
        );
        let previous: u16 = match fs::read_to_string(&boot_path) {
            Ok(text) => text.trim().parse().with_context(|| format!("{} is corrupt; {fresh_identity}", boot_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", boot_path.display())),
        };
        let Some(boot_count) = previous.checked_add(1) else {
            bail!("{} reached its limit of {} restarts; {fresh_identity}", boot_path.display(), u16::MAX);
        };
        Ok(Self { id: crate::pki::node_id_of_key(&key), boot_count, key_pem, boot_path })
    }

    /// Records this boot, so the next start is a newer generation.
    pub fn count_boot(&self) -> Result<()> {
        write_atomic(&self.boot_path, self.boot_count.to_string().as_bytes(), 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_restart_and_counts_boots() {
        let dir = std::env::temp_dir().join(format!("shoal-id-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = NodeIdentity::load_or_create(&dir).expect("first start");
        first.count_boot().expect("count");
        let unbooted = NodeIdentity::load_or_create(&dir).expect("a start that fails before binding");
        assert_eq!(unbooted.boot_count, 2);
        let second = NodeIdentity::load_or_create(&dir).expect("restart");
        second.count_boot().expect("count");
        assert_eq!(first.id, second.id);
        assert_eq!((first.boot_count, second.boot_count), (1, 2));
        let mode = fs::metadata(dir.join(KEY_FILE)).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = std::env::temp_dir().join(format!("shoal-id-test-b-{}", std::process::id()));
        let _ = fs::remove_dir_all(&other);
        let third = NodeIdentity::load_or_create(&other).expect("other node");
        assert_ne!(third.id, first.id);
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&other);
    }

    #[test]
    fn corrupt_boot_counter_is_explained() {
        let dir = std::env::temp_dir().join(format!("shoal-id-test-c-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        NodeIdentity::load_or_create(&dir).expect("first start").count_boot().expect("count");
        fs::write(dir.join(BOOT_FILE), "garbage").expect("write");
        let err = format!("{:#}", NodeIdentity::load_or_create(&dir).err().expect("must fail"));
        assert!(err.contains("corrupt") && err.contains("node.key"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn shared_data_dirs_are_refused_not_chmodded() {
        let dir = std::env::temp_dir().join(format!("shoal-id-test-d-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = format!("{:#}", NodeIdentity::load_or_create(&dir).err().expect("must refuse"));
        assert!(err.contains("writable by other users"), "{err}");
        assert_eq!(fs::metadata(&dir).expect("meta").permissions().mode() & 0o777, 0o777, "mode untouched");
        let _ = fs::remove_dir_all(&dir);
    }
}
