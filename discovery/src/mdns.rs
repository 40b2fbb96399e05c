//! The real discovery adapter: announce and browse `_shoal._udp.local.` with `mdns-sd`.
//!
//! TXT fields: `cid` (cluster id, derived from the secret, never the secret), `nid` (node id),
//! `gp` (gossip port), `ver` (shoal version). Browsed peers are handed to membership as
//! [`PeerHint`]s; the core drops those of another cluster.

use crate::membership::PeerHint;
use crate::ports::ChannelPeers;
use crate::secret::ClusterId;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use shoal_wire::NodeId;
use std::net::{IpAddr, SocketAddr};
use tokio::sync::mpsc;

/// The DNS-SD service type shoal uses.
pub const SERVICE_TYPE: &str = "_shoal._udp.local.";
/// Bound on discovered peers waiting for the membership task.
const HINT_QUEUE: usize = 256;

/// What to announce and where.
#[derive(Debug, Clone)]
pub struct MdnsConfig {
    /// Interfaces to use, by name. Empty means every interface.
    pub interfaces: Vec<String>,
    pub node: NodeId,
    pub cluster: ClusterId,
    /// The gossip address peers should use to reach us.
    pub advertise: SocketAddr,
    pub version: String,
}

/// mDNS could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MdnsError {
    #[error("could not start mDNS: {0}. Use --join HOST:PORT seeds with --no-mdns where multicast is unavailable")]
    Daemon(#[from] mdns_sd::Error),
}

/// A running announcement and browser. Dropping it withdraws the announcement.
pub struct MdnsDiscovery {
    daemon: ServiceDaemon,
    fullname: String,
}

impl MdnsDiscovery {
    /// Starts announcing and browsing; discovered peers arrive on the returned source.
    pub fn start(cfg: &MdnsConfig) -> Result<(Self, ChannelPeers), MdnsError> {
        let daemon = ServiceDaemon::new()?;
        // IPv4 only: gossip identities carry one IPv4 socket address.
        daemon.disable_interface(IfKind::IPv6)?;
        if !cfg.interfaces.is_empty() {
            daemon.disable_interface(IfKind::All)?;
            for name in &cfg.interfaces {
                daemon.enable_interface(IfKind::Name(name.clone()))?;
            }
        }
        let properties = [
            ("cid", cfg.cluster.to_string()),
            ("nid", cfg.node.to_string()),
            ("gp", cfg.advertise.port().to_string()),
            ("ver", cfg.version.clone()),
        ];
        let host = format!("shoal-{}.local.", cfg.node.short());
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &cfg.node.to_string(),
            &host,
            cfg.advertise.ip(),
            cfg.advertise.port(),
            &properties[..],
        )?;
        let fullname = info.get_fullname().to_string();
        daemon.register(info)?;
        let browse = daemon.browse(SERVICE_TYPE)?;
        let (tx, rx) = mpsc::channel(HINT_QUEUE);
        tokio::spawn(async move {
            while let Ok(event) = browse.recv_async().await {
                if let ServiceEvent::ServiceResolved(service) = event {
                    if let Some(hint) = hint_from(&service) {
                        // A full queue means the task is far behind; mDNS repeats itself.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(hint) {
                            break;
                        }
                    }
                }
            }
        });
        Ok((Self { daemon, fullname }, ChannelPeers(rx)))
    }

    /// Withdraws the announcement and stops the daemon.
    pub fn stop(&self) {
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a resolved service's TXT fields into a hint; anything missing or malformed is
/// ignored (it may be another program using the same service type).
fn hint_from(service: &mdns_sd::ResolvedService) -> Option<PeerHint> {
    let cluster = ClusterId::parse(service.get_property_val_str("cid")?)?;
    let node = NodeId::parse(service.get_property_val_str("nid")?)?;
    let port: u16 = service.get_property_val_str("gp")?.parse().ok()?;
    let ip = service.get_addresses_v4().into_iter().min()?;
    Some(PeerHint { cluster, node, addr: SocketAddr::new(IpAddr::V4(ip), port) })
}
