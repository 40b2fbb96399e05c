//! Remote access with client certificates (issue 11, "Remote access"): the Docker API and
//! the shoal API on the node's TCP port over mutual TLS, and the user's side of it.
//!
//! - Node side ([`route_user_endpoints`]): ALPN `http/1.1`, and ClientHellos offering no
//!   ALPN (the `docker` CLI offers none), go to the Docker API; `shoal-api/1` to the local
//!   API's JSON lines. Both require a certificate of the cluster CA (a user's client
//!   certificate, or a node's) whose id is not revoked (`pki::tls::user_server_config`).
//! - User side: the cert dir `shoal client new` writes ([`CertDir`]: `ca.pem`, `cert.pem`,
//!   `key.pem`), [`connect_api`] for `shoal --host tcp://…`, and `shoal env` ([`env_script`]).

use crate::api;
use crate::control::Control;
use crate::dockerapi::{self, DockerApi};
use crate::pki::tls::{peer_holder, user_client_config, user_server_config, API_ALPN, HTTP11_ALPN};
use crate::pki::{NodeCredentials, Revocations};
use crate::port::{BoxFuture, PortServer, Service, NO_ALPN};
use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::StartHandshake;

/// Files of a client cert dir.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
/// How long a user's TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Remote Docker API connections at once (as on the unix socket).
const MAX_DOCKER_SESSIONS: usize = dockerapi::MAX_CONNECTIONS;
/// Remote shoal API connections at once.
const MAX_API_SESSIONS: usize = 32;
/// How long the CLI waits for the TCP connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

enum Served {
    Docker(Arc<DockerApi>),
    Api(Control),
}

/// One user-facing protocol on the port: finishes the handshake with the user server
/// config, then serves the Docker API or the shoal API on the TLS stream.
struct UserService {
    served: Served,
    config: Arc<rustls::ServerConfig>,
    slots: Arc<Semaphore>,
    what: &'static str,
}

impl Service for UserService {
    fn serve(&self, start: StartHandshake<TcpStream>, peer_addr: SocketAddr, gate: crate::port::Gate) -> BoxFuture<()> {
        let (config, slots) = (self.config.clone(), self.slots.clone());
        let what = self.what;
        let served = match &self.served {
            Served::Docker(api) => Served::Docker(api.clone()),
            Served::Api(ctl) => Served::Api(ctl.clone()),
        };
        Box::pin(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::info!(%peer_addr, what, error = %e, "remote TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer_addr, what, "remote TLS handshake timed out");
                    return;
                }
            };
            match peer_holder(stream.get_ref().1) {
                Ok(holder) => tracing::debug!(%peer_addr, what, ?holder, "remote session"),
                Err(e) => {
                    tracing::info!(%peer_addr, what, error = %e, "remote session refused");
                    return;
                }
            }
            // Places only for holders of a certificate of the cluster.
            let Ok(_session) = gate.authenticated(peer_addr, &slots) else { return };
            match served {
                Served::Docker(api) => dockerapi::serve_connection(stream, api).await,
                Served::Api(ctl) => {
                    if let Err(e) = api::handle_stream(stream, ctl).await {
                        tracing::debug!(%peer_addr, error = %e, "remote api connection ended with an error");
                    }
                }
            }
        })
    }
}

/// Routes the users' endpoints on the node's port: the Docker API under `http/1.1` and for
/// ClientHellos without ALPN, the shoal API under `shoal-api/1`.
pub fn route_user_endpoints(
    port: &PortServer,
    ca: &CertificateDer<'static>,
    creds: Arc<NodeCredentials>,
    revoked: Revocations,
    ctl: Control,
) -> Result<()> {
    let docker = Arc::new(UserService {
        served: Served::Docker(DockerApi::new(ctl.clone())),
        config: user_server_config(ca, creds.clone(), revoked.clone(), &[HTTP11_ALPN])?,
        slots: Arc::new(Semaphore::new(MAX_DOCKER_SESSIONS)),
        what: "docker api",
    });
    let shoal = Arc::new(UserService {
        served: Served::Api(ctl),
        config: user_server_config(ca, creds, revoked, &[API_ALPN])?,
        slots: Arc::new(Semaphore::new(MAX_API_SESSIONS)),
        what: "shoal api",
    });
    port.route(HTTP11_ALPN, docker.clone());
    port.route(NO_ALPN, docker);
    port.route(API_ALPN, shoal);
    Ok(())
}

// ------------------------------------------------------------------ the user's side

/// A client cert dir: the cluster CA, the client certificate and its key.
pub struct CertDir {
    pub dir: PathBuf,
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

const MAKE_ONE: &str = "`shoal client new NAME --out DIR` on a node of the cluster writes ca.pem, cert.pem and key.pem";

/// Checks that `dir` holds the three files (clear errors naming the missing one) and
/// gives its absolute path.
pub fn check_cert_dir(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("the cert dir {} does not exist or is not a directory; {MAKE_ONE}", dir.display());
    }
    for file in [CA_FILE, CERT_FILE, KEY_FILE] {
        if !dir.join(file).is_file() {
            bail!("the cert dir {} has no {file}; {MAKE_ONE}", dir.display());
        }
    }
    std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

impl CertDir {
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = check_cert_dir(dir)?;
        let read = |file: &str| std::fs::read(dir.join(file)).with_context(|| format!("cannot read {}", dir.join(file).display()));
        let ca = CertificateDer::from_pem_slice(&read(CA_FILE)?)
            .map_err(|e| anyhow!("{} is not a PEM certificate ({e}); {MAKE_ONE}", dir.join(CA_FILE).display()))?;
        let cert = CertificateDer::from_pem_slice(&read(CERT_FILE)?)
            .map_err(|e| anyhow!("{} is not a PEM certificate ({e}); {MAKE_ONE}", dir.join(CERT_FILE).display()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(KEY_FILE)?)
            .map_err(|_| anyhow!("{} is not a PEM private key; {MAKE_ONE}", dir.join(KEY_FILE).display()))?;
        Ok(Self { dir, ca, cert, key })
    }
}

/// A node's address as the user gives it: `HOST`, `HOST:PORT`, `[IPv6]:PORT`, a bare IPv6
/// address, optionally after `tcp://`. Gives the host as it goes into a URL (IPv6 in
/// brackets) and the port (`default_port` when none is given).
pub fn parse_node_addr(text: &str, default_port: u16) -> Result<(String, u16)> {
    let text = text.trim();
    let rest = text.strip_prefix("tcp://").unwrap_or(text);
    if rest.contains("://") {
        bail!("`{text}` is not a node address: give HOST, HOST:PORT or tcp://HOST:PORT");
    }
    let rest = rest.trim_end_matches('/');
    if let Ok(ip) = rest.parse::<IpAddr>() {
        return Ok((url_host(ip), default_port));
    }
    if let Ok(addr) = rest.parse::<SocketAddr>() {
        return Ok((url_host(addr.ip()), addr.port()));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| anyhow!("`{text}`: the port must be 1 to 65535"))?;
            (host, port)
        }
        None => (rest, default_port),
    };
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        bail!("`{text}` is not a node address: give a host name or IP address, optionally with :PORT");
    }
    Ok((host.to_ascii_lowercase(), port))
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `text` as one word for a POSIX shell (single quotes; a `'` inside becomes `'\''`).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// What `shoal env` prints for `eval "$(shoal env …)"`: the Docker CLI's and the shoal CLI's
/// variables for the node `host:port` with the certificates in `cert_dir` (absolute).
pub fn env_script(host: &str, port: u16, cert_dir: &Path, invocation: &str) -> String {
    let url = format!("tcp://{host}:{port}");
    let dir = shell_quote(&cert_dir.display().to_string());
    format!(
        "export DOCKER_HOST={url}\nexport DOCKER_TLS_VERIFY=1\nexport DOCKER_CERT_PATH={dir}\n\
         export SHOAL_HOST={url}\nexport SHOAL_CERT_PATH={dir}\n\
         # Run this command to configure your shell:\n# eval \"$({invocation})\"\n"
    )
}

/// Opens a TLS session with the shoal API of the node at `host:port`, presenting the
/// client certificate of `certs`.
pub async fn connect_api(host: &str, port: u16, certs: CertDir) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = user_client_config(&certs.ca, certs.cert, certs.key, API_ALPN)
        .map_err(|e| anyhow!("cannot use the certificates in {}: {e}", certs.dir.display()))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare, port)))
        .await
        .map_err(|_| anyhow!("no answer from {host}:{port} within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("cannot reach the node at {host}:{port}; is its agent running, and is this its --bind port?"))?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(crate::pki::tls::server_name(None), tcp))
        .await
        .map_err(|_| anyhow!("the TLS handshake with {host}:{port} timed out"))?
        .with_context(|| format!("TLS with {host}:{port} failed (is it a node of the cluster whose ca.pem is in {}?)", certs.dir.display()))?;
    Ok(tls)
}

/// Writes a new cert dir: `dir` created mode 0700 if missing, `ca.pem` and `cert.pem` 0644,
/// `key.pem` 0600. Refuses to overwrite any of the three unless `force`.
pub fn write_cert_dir(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str, force: bool) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if !force {
        for file in [CA_FILE, CERT_FILE, KEY_FILE] {
            if dir.join(file).exists() {
                bail!("{} exists; refusing to overwrite it (use --force, or another --out)", dir.join(file).display());
            }
        }
    }
    write_file(&dir.join(KEY_FILE), key_pem, 0o600)?;
    write_file(&dir.join(CERT_FILE), cert_pem, 0o644)?;
    write_file(&dir.join(CA_FILE), ca_pem, 0o644)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path); // --force: a fresh file gets the mode below
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().ok();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("cannot set the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_parse_with_the_default_port() {
        let p = |t: &str| parse_node_addr(t, 7480).map_err(|e| e.to_string());
        assert_eq!(p("10.0.0.5"), Ok(("10.0.0.5".into(), 7480)));
        assert_eq!(p("10.0.0.5:9000"), Ok(("10.0.0.5".into(), 9000)));
        assert_eq!(p("tcp://10.0.0.5:9000"), Ok(("10.0.0.5".into(), 9000)));
        assert_eq!(p("Pi-1.Home"), Ok(("pi-1.home".into(), 7480)));
        assert_eq!(p("pi-1:7481"), Ok(("pi-1".into(), 7481)));
        assert_eq!(p("fd00::1"), Ok(("[fd00::1]".into(), 7480)));
        assert_eq!(p("[fd00::1]:7000"), Ok(("[fd00::1]".into(), 7000)));
        for bad in ["", "http://x", "a b", "x:0", "x:99999", "x:y", "under_score"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_script_exports_both_clis_and_quotes_the_dir() {
        let out = env_script("10.0.0.5", 7480, Path::new("/home/me/it's certs"), "shoal env --cert-dir d --node 10.0.0.5");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "export DOCKER_HOST=tcp://10.0.0.5:7480",
                "export DOCKER_TLS_VERIFY=1",
                r"export DOCKER_CERT_PATH='/home/me/it'\''s certs'",
                "export SHOAL_HOST=tcp://10.0.0.5:7480",
                r"export SHOAL_CERT_PATH='/home/me/it'\''s certs'",
            ]
        );
        assert!(lines[5..].iter().all(|l| l.starts_with('#')));
    }

    #[test]
    fn cert_dirs_are_checked_and_written_private_without_overwriting() {
        let base = std::env::temp_dir().join(format!("shoal-certdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("laptop");
        let err = check_cert_dir(&dir).expect_err("missing").to_string();
        assert!(err.contains("does not exist") && err.contains("shoal client new"), "{err}");
        write_cert_dir(&dir, "CA", "CERT", "KEY", false).expect("written");
        assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(dir.join(KEY_FILE)).expect("key").permissions().mode() & 0o777, 0o600);
        assert_eq!(check_cert_dir(&dir).expect("complete"), dir);
        let err = write_cert_dir(&dir, "CA2", "CERT2", "KEY2", false).expect_err("refused").to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.join(KEY_FILE)).expect("key"), "KEY");
        write_cert_dir(&dir, "CA2", "CERT2", "KEY2", true).expect("forced");
        assert_eq!(std::fs::read_to_string(dir.join(KEY_FILE)).expect("key"), "KEY2");
        std::fs::remove_file(dir.join(CERT_FILE)).expect("rm");
        let err = check_cert_dir(&dir).expect_err("incomplete").to_string();
        assert!(err.contains("has no cert.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
