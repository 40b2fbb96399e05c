//! Turning flags into a validated agent configuration: the join secret, labels, addresses.

use anyhow::{anyhow, bail, Context, Result};
use shoal_discovery::identity::{validate_label, validate_name};
use shoal_discovery::JoinSecret;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;

/// The well-known gossip port (UDP). Every other port a node opens derives from the gossip
/// port unless set explicitly: the API/Raft TCP port is gossip + 1.
pub const DEFAULT_GOSSIP_PORT: u16 = 7480;

/// Reads the join secret from `--token`, `SHOAL_TOKEN` (clap maps it onto `token`) or
/// `--token-file`, in that order.
pub fn resolve_secret(token: Option<&str>, token_file: Option<&Path>) -> Result<JoinSecret> {
    let text = match (token, token_file) {
        (Some(t), _) => t.to_string(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the token file {}", file.display()))?,
        (None, None) => bail!(
            "no join token given. Create one with `shoal token new`, then start every node of the \
             cluster with `--token <token>`, the SHOAL_TOKEN environment variable, or `--token-file <file>`"
        ),
    };
    JoinSecret::parse(&text).map_err(|e| anyhow!("{e}"))
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

/// The address peers use to reach us: the bind address if specific, else `--advertise`,
/// else the first non-loopback IPv4 address (of the `--mdns-interface`s if given).
pub fn resolve_advertise(bind: SocketAddr, advertise: Option<IpAddr>, interfaces: &[String]) -> Result<SocketAddr> {
    if let Some(ip) = advertise {
        return Ok(SocketAddr::new(ip, bind.port()));
    }
    if !bind.ip().is_unspecified() {
        return Ok(bind);
    }
    let candidates = if_addrs::get_if_addrs().context("cannot list network interfaces")?;
    let ip = candidates
        .iter()
        .filter(|i| !i.is_loopback())
        .filter(|i| interfaces.is_empty() || interfaces.iter().any(|n| n == &i.name))
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) if !v4.is_link_local() => Some(v4),
            _ => None,
        })
        .min()
        .ok_or_else(|| {
            anyhow!("found no IPv4 address to advertise; pass --advertise IP or --bind IP:PORT")
        })?;
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
    fn specific_bind_is_advertised_as_is() {
        let bind: SocketAddr = "127.0.0.1:9100".parse().expect("addr");
        assert_eq!(resolve_advertise(bind, None, &[]).expect("ok"), bind);
        let adv = resolve_advertise(default_bind(), Some("10.1.2.3".parse().expect("ip")), &[]).expect("ok");
        assert_eq!(adv, "10.1.2.3:7480".parse().expect("addr"));
    }
}
