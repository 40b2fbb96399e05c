//! A tiny image for tests on hosts without a registry: `FROM scratch` plus a static
//! busybox (Debian package `busybox-static`), with `sh` and `sleep` linked to it; and
//! images derived from a local one that differ only by a label (each its own id).

use std::io;
use std::path::Path;

/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

const DOCKERFILE: &str = "FROM scratch\nCOPY bin /bin\nCMD [\"/bin/sh\"]\n";

/// A build context (tar) whose Dockerfile copies the static busybox at `busybox` into
/// `/bin` of an empty image, with `/bin/sh` and `/bin/sleep` as symlinks to it.
pub fn busybox_context(busybox: &Path) -> io::Result<Vec<u8>> {
    let binary = std::fs::read(busybox)?;
    let mut builder = tar::Builder::new(Vec::new());
    let add_file = |builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append_data(&mut header, path, data)
    };
    add_file(&mut builder, "Dockerfile", DOCKERFILE.as_bytes(), 0o644)?;
    add_file(&mut builder, "bin/busybox", &binary, 0o755)?;
    for applet in ["sh", "sleep"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    builder.into_inner()
}

/// Label that tells test images apart (its value is unique to the image).
pub const TEST_IMAGE_LABEL: &str = "shoal.test.image";

/// A build context (tar) for `FROM base` plus the label [`TEST_IMAGE_LABEL`]`=value`: a
/// new image id without a new layer, built from a local image (nothing is pulled).
pub fn labelled_context(base: &str, value: &str) -> io::Result<Vec<u8>> {
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    if !ok(base) || !ok(value) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "base image and label value: letters, digits and . _ - : / only"));
    }
    let dockerfile = format!("FROM {base}\nLABEL {TEST_IMAGE_LABEL}={value}\n");
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())?;
    builder.into_inner()
}
