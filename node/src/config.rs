//! Turning flags into a validated agent configuration: the join secret, labels, addresses.

use anyhow::{anyhow, bail, Context, Result};
use shoal_discovery::identity::{validate_label, validate_name};
use shoal_discovery::JoinSecret;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;

/// The well-known port: UDP for gossip, and the same number over TCP for everything else
/// (Raft, joins, ...), told apart by TLS ALPN.
pub const DEFAULT_GOSSIP_PORT: u16 = 7480;

/// Reads the join secret from `--token`, `SHOAL_TOKEN` (clap maps it onto `token`) or
/// `--token-file`, in that order.
pub fn resolve_secret(token: Option<&str>, token_file: Option<&Path>) -> Result<JoinSecret> {
    resolve_token(token, token_file).map(|t| t.secret)
}

/// [`resolve_secret`], with the CA a `shoal2-` token pins.
pub fn resolve_token(token: Option<&str>, token_file: Option<&Path>) -> Result<shoal_secret::Token> {
    let text = match (token, token_file) {
        (Some(t), _) => t.to_string(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the token file {}", file.display()))?,
        (None, None) => bail!(
            "no join token given. Create one with `shoal token new`, then start every node of the \
             cluster with `--token <token>`, the SHOAL_TOKEN environment variable, or `--token-file <file>`"
        ),
    };
    shoal_secret::Token::parse(&text).map_err(|e| anyhow!("{e}"))
}

/// The file in the data dir holding the token of a cluster this node founded without being
/// given one (mode 0600; `shoal token show` prints it).
pub const TOKEN_FILE: &str = "token";

/// Where the agent's join secret came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOrigin {
    /// `--token`, `SHOAL_TOKEN` or `--token-file`.
    Given,
    /// Read back from the data dir: this node founded its cluster on an earlier start.
    Stored,
    /// Made just now: this node founds a new cluster.
    Created,
}

/// The join secret of an agent: the one given, else the one this data dir's node created
/// when it founded its cluster, else (on a data dir that never joined a cluster) a new one,
/// kept in the data dir. A given token that differs from a stored one is refused: that data
/// dir belongs to another cluster.
pub fn agent_secret(token: Option<&str>, token_file: Option<&Path>, data_dir: &Path) -> Result<(JoinSecret, Option<shoal_secret::CaPin>, TokenOrigin)> {
    let path = data_dir.join(TOKEN_FILE);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(JoinSecret::parse(&text).map_err(|e| {
            anyhow!("{} is damaged ({e}); restore it, or give the cluster's token with --token-file", path.display())
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if token.is_some() || token_file.is_some() {
        let shoal_secret::Token { secret: given, ca_pin } = resolve_token(token, token_file)?;
        if stored.as_ref().is_some_and(|s| s.cluster_id() != given.cluster_id()) {
            bail!(
                "the data dir {} belongs to the cluster this node founded (its token is in {}), not to the cluster of the given token. \
                 To join the other cluster, stop this node and give it a fresh --data-dir (or move this one away)",
                data_dir.display(),
                path.display()
            );
        }
        return Ok((given, ca_pin, TokenOrigin::Given));
    }
    if let Some(secret) = stored {
        return Ok((secret, None, TokenOrigin::Stored));
    }
    if data_dir.join("node.crt").exists() {
        bail!(
            "no join token given, and this node ({}) already belongs to a cluster that was started with one. \
             Start it with the same token: SHOAL_TOKEN=<token> shoal agent, or --token-file <file>",
            data_dir.display()
        );
    }
    crate::identity::ensure_data_dir(data_dir)?;
    let secret = JoinSecret::generate(&mut rand::rng());
    crate::identity::write_atomic(&path, format!("{}\n", secret.to_token()).as_bytes(), 0o600)?;
    Ok((secret, None, TokenOrigin::Created))
}

/// The token kept in `data_dir` by a node that founded its cluster, for `shoal token show`:
/// pinned to the cluster's CA (`shoal2-…`) once the data dir holds it (`ca.crt`).
pub fn stored_token(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = JoinSecret::parse(&text).map_err(|e| anyhow!("{} is damaged: {e}", path.display()))?;
            let ca_pin = ca_pin_of(data_dir)?;
            Ok(shoal_secret::Token { secret, ca_pin }.to_text())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no token is kept in {}: shoal keeps only the token of a cluster it founded itself (an agent started without \
             --token). This node was either given its token (look where you keep it), or never started with this --data-dir",
            data_dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The pin of the CA the node in `data_dir` holds (its `ca.crt`), if it holds one.
pub fn ca_pin_of(data_dir: &Path) -> Result<Option<shoal_secret::CaPin>> {
    let ca = crate::control::files::TrustFiles::new(data_dir).load_ca()?;
    Ok(ca.map(|der| shoal_secret::CaPin::of_der(&der)))
}

/// Warns when a token file can be read by other users (it admits machines to the cluster).
pub fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o044 != 0 {
            tracing::warn!(path = %path.display(), "the token file is readable by other users; `chmod 600` it");
        }
    }
}

/// Parses repeated `--label k=v` flags.
pub fn parse_labels(flags: &[String]) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for flag in flags {
        let (k, v) = flag
            .split_once('=')
            .ok_or_else(|| anyhow!("label `{flag}` must look like key=value, e.g. --label zone=attic"))?;
        validate_label(k, v).map_err(|e| anyhow!("label `{flag}`: {e}"))?;
        if labels.insert(k.to_string(), v.to_string()).is_some() {
            bail!("label key `{k}` given twice");
        }
    }
    if labels.len() > shoal_discovery::identity::MAX_LABELS {
        bail!("at most {} labels are allowed", shoal_discovery::identity::MAX_LABELS);
    }
    Ok(labels)
}

/// The node name: `--name`, or the hostname cut down to what names allow.
pub fn resolve_name(flag: Option<&str>) -> Result<String> {
    if let Some(name) = flag {
        validate_name(name).map_err(|e| anyhow!("--name `{name}`: {e}"))?;
        return Ok(name.to_string());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let cleaned: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '-' })
        .take(shoal_discovery::identity::MAX_NAME_LEN)
        .collect();
    Ok(if cleaned.is_empty() { "shoal-node".to_string() } else { cleaned })
}

/// Resolves `--join HOST:PORT` seeds (a missing port means the default gossip port).
pub fn resolve_seeds(flags: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for flag in flags {
        let with_port = if flag.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            flag.clone()
        } else {
            format!("{flag}:{DEFAULT_GOSSIP_PORT}")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("--join `{flag}`: cannot resolve; use HOST:PORT, e.g. 10.0.0.5:{DEFAULT_GOSSIP_PORT}"))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| anyhow!("--join `{flag}` has no IPv4 address"))?;
        out.push(addr);
    }
    Ok(out)
}

/// Interface name prefixes of virtual networks (container bridges, VPNs) whose addresses
/// other machines on the LAN cannot reach; never advertised unless asked for.
const VIRTUAL_IF_PREFIXES: &[&str] =
    &["docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "vxlan", "tailscale", "zt", "wg", "tun", "tap", "lxc", "podman", "kube"];

/// The interface of the IPv4 default route, read from `/proc/net/route` (no packet sent).
fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    default_route_in(&table)
}

fn default_route_in(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 2 && cols[1] == "00000000").then(|| cols[0].to_string())
    })
}

/// Picks the address to advertise among `(interface, ipv4)` candidates: the default route's
/// interface first, then any non-virtual interface, lowest address first; loopback and
/// link-local never; only `allowed` interfaces when that list is not empty.
fn pick_advertise(candidates: &[(String, Ipv4Addr)], default_if: Option<&str>, allowed: &[String]) -> Option<Ipv4Addr> {
    let usable = |(name, ip): &&(String, Ipv4Addr)| {
        !ip.is_loopback() && !ip.is_link_local() && (allowed.is_empty() || allowed.iter().any(|a| a == name))
    };
    let is_virtual = |name: &str| VIRTUAL_IF_PREFIXES.iter().any(|p| name.starts_with(p));
    let by_rank = candidates.iter().filter(usable).min_by_key(|(name, ip)| {
        let rank = if Some(name.as_str()) == default_if {
            0
        } else if !is_virtual(name) || !allowed.is_empty() {
            1
        } else {
            2
        };
        (rank, *ip)
    })?;
    let (name, ip) = by_rank;
    // A virtual interface only if asked for, or if it carries the default route.
    let acceptable = !allowed.is_empty() || Some(name.as_str()) == default_if || !is_virtual(name);
    acceptable.then_some(*ip)
}

/// The address peers use to reach us: the bind address if specific, else `--advertise`,
/// else the IPv4 address of the default route's interface, else of another non-virtual
/// interface (of the `--mdns-interface`s if given).
pub fn resolve_advertise(bind: SocketAddr, advertise: Option<IpAddr>, interfaces: &[String]) -> Result<SocketAddr> {
    if let Some(ip) = advertise {
        return Ok(SocketAddr::new(ip, bind.port()));
    }
    if !bind.ip().is_unspecified() {
        return Ok(bind);
    }
    let candidates: Vec<(String, Ipv4Addr)> = if_addrs::get_if_addrs()
        .context("cannot list network interfaces")?
        .into_iter()
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) => Some((i.name.clone(), v4)),
            IpAddr::V6(_) => None,
        })
        .collect();
    let default_if = default_route_interface();
    let ip = pick_advertise(&candidates, default_if.as_deref(), interfaces).ok_or_else(|| {
        anyhow!("found no LAN IPv4 address to advertise (only loopback or container/VPN interfaces); pass --advertise IP or --bind IP:PORT")
    })?;
    tracing::info!(
        %ip,
        default_route = default_if.as_deref().unwrap_or("none"),
        candidates = ?candidates.iter().map(|(n, a)| format!("{n}={a}")).collect::<Vec<_>>(),
        "advertising this address to peers (override with --advertise)"
    );
    Ok(SocketAddr::new(IpAddr::V4(ip), bind.port()))
}

/// Default bind: every interface, the well-known port.
pub fn default_bind() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_GOSSIP_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_says_how_to_make_one() {
        let err = resolve_secret(None, None).expect_err("must fail").to_string();
        assert!(err.contains("shoal token new"), "{err}");
    }

    #[test]
    fn bad_token_is_rejected_without_echo() {
        let err = resolve_secret(Some("shoal1-secretsecret"), None).expect_err("must fail").to_string();
        assert!(!err.contains("secretsecret"), "{err}");
    }

    #[test]
    fn labels_are_parsed_and_checked() {
        let l = parse_labels(&["zone=attic".into(), "arch=arm".into()]).expect("ok");
        assert_eq!(l.get("zone").map(String::as_str), Some("attic"));
        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["a=1".into(), "a=2".into()]).is_err());
        assert!(parse_labels(&["bad key=1".into()]).is_err());
    }

    #[test]
    fn seeds_default_their_port() {
        let s = resolve_seeds(&["127.0.0.1".into(), "127.0.0.1:9000".into()]).expect("ok");
        assert_eq!(s[0].port(), DEFAULT_GOSSIP_PORT);
        assert_eq!(s[1].port(), 9000);
        assert!(resolve_seeds(&["no such host.invalid:1".into()]).is_err());
    }

    #[test]
    fn advertise_prefers_the_default_route_and_skips_container_bridges() {
        let c = |list: &[(&str, [u8; 4])]| -> Vec<(String, Ipv4Addr)> {
            list.iter().map(|(n, a)| (n.to_string(), Ipv4Addr::from(*a))).collect()
        };
        let host = c(&[("lo", [127, 0, 0, 1]), ("docker0", [172, 17, 0, 1]), ("eth0", [192, 168, 1, 20]), ("tailscale0", [100, 64, 0, 5])]);
        assert_eq!(pick_advertise(&host, Some("eth0"), &[]), Some(Ipv4Addr::new(192, 168, 1, 20)));
        assert_eq!(pick_advertise(&host, None, &[]), Some(Ipv4Addr::new(192, 168, 1, 20)), "docker0 sorts lower but is virtual");
        let only_virtual = c(&[("lo", [127, 0, 0, 1]), ("docker0", [172, 17, 0, 1])]);
        assert_eq!(pick_advertise(&only_virtual, None, &[]), None);
        assert_eq!(pick_advertise(&only_virtual, None, &["docker0".into()]), Some(Ipv4Addr::new(172, 17, 0, 1)), "asked for explicitly");
        let two = c(&[("eth0", [10, 0, 0, 9]), ("wlan0", [10, 0, 0, 3])]);
        assert_eq!(pick_advertise(&two, Some("eth0"), &[]), Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(pick_advertise(&two, None, &["wlan0".into()]), Some(Ipv4Addr::new(10, 0, 0, 3)));
        let table = "Iface\tDestination\tGateway\nbr0\t0001A8C0\t00000000\neth0\t00000000\t0101A8C0\n";
        assert_eq!(default_route_in(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_in("Iface\tDestination\n"), None);
    }

    #[test]
    fn specific_bind_is_advertised_as_is() {
        let bind: SocketAddr = "127.0.0.1:9100".parse().expect("addr");
        assert_eq!(resolve_advertise(bind, None, &[]).expect("ok"), bind);
        let adv = resolve_advertise(default_bind(), Some("10.1.2.3".parse().expect("ip")), &[]).expect("ok");
        assert_eq!(adv, "10.1.2.3:7480".parse().expect("addr"));
    }
}

/// Parses a duration: a bare number of seconds (`90`), or numbers each followed by a unit
/// (`ms`, `s`, `m`, `h`, `d`), summed: `500ms`, `90s`, `1m30s`, `30m`, `12h`, `7d`.
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let bad = || format!("`{text}` is not a duration; use e.g. 500ms, 90s, 1m30s, 30m, 12h or 7d");
    let mut rest = text.trim();
    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
        return rest.parse().map(std::time::Duration::from_secs).map_err(|_| bad());
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..].bytes().take_while(u8::is_ascii_alphabetic).count();
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit_ms: u64 = match &rest[digits..digits + units] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total_ms = number.checked_mul(unit_ms).and_then(|ms| total_ms.checked_add(ms)).ok_or_else(bad)?;
        rest = &rest[digits + units..];
    }
    Ok(std::time::Duration::from_millis(total_ms))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h1ms"), Ok(Duration::from_millis(3_600_001)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "d", "7w", "-1s", "1.5h", "99999999999999999999d", "1m 30s", "s30", "30sm", "1m30"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("1m30s"), "{bad:?}: {e}");
        }
    }
}
