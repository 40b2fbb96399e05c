//! The cluster controller of one node (design steps 3 and 4): bootstrap, trust, Raft and
//! the leader's duties, wired to membership.
//!
//! Life of a node:
//! 1. **No certificate yet.** Every [`BOOTSTRAP_TICK`] the controller reads membership and
//!    asks the pure rule `shoal_cluster::bootstrap::decide`: wait for `--bootstrap-expect`
//!    members and a settled view; the lowest id *initialises*; the others wait for it; a
//!    node that sees a member with the `in_cluster` fact *joins* through that member's TCP
//!    port (ALPN `shoal-join/1`) with the HMAC'd join protocol (`pki::join`, `joinnet`).
//!    The initializer creates the CA (kept sealed in `ca.pending` until committed), issues
//!    its own certificate and initialises Raft with itself as the only voter; the others join
//!    and autopilot promotes them (so "N voters" is reached through committed membership
//!    changes, never by two nodes each believing they initialised).
//! 2. **Certificate, Raft running.** Raft RPC over mutual TLS (`raftnet`, ALPN
//!    `shoal-raft/1`) and the join service (`joinnet`) are routed on the node's one TCP
//!    port (`crate::port`, the gossip port's number), Raft only with certificates of the
//!    cluster CA. A restarted node with a certificate in its data dir starts here directly.
//!    Background loops: [`leader`] duties (commit the CA, add learners, autopilot, remove
//!    revoked nodes) while this node leads; the state watcher (revoked set into TLS, the
//!    `in_cluster` fact); certificate renewal at two thirds of the lifetime.
//!
//! Writes from anywhere (API, join answers, renewal) go through [`Running::write`], which
//! proposes on the leader or forwards to it over the Raft connection.

pub mod files;
mod leader;
pub mod report;
mod runner;

use crate::joinnet::{self, JoinAuthority, JoinServerConfig, JoinService, Refusal, JOIN_ALPN};
use crate::pki::tls::RAFT_ALPN;
use crate::port::PortServer;
use crate::pki::{self, ClusterCa, IssuePolicy, Issuer, JoinRequest, MutualTls, NodeCredentials, NodeGrant, NodeRole, Revocations};
use crate::raftnet::{ClientConfig, RaftNetwork, RaftService, ServerConfig};
use anyhow::{anyhow, Context, Result};
use files::{StoredCert, TrustFiles};
use rustls::pki_types::CertificateDer;
use shoal_cluster::bootstrap::BootstrapDecision;
use shoal_control::{BootstrapCore, PlantedBug};
use shoal_consensus::openraft::Config;
use shoal_consensus::runtime::{os_seed, with_seed};
use shoal_consensus::store::disk::RedbSnapshots;
use shoal_consensus::types::ShoalRaft;
use shoal_consensus::{Applied, ClusterState, Command, RaftNodeId, RedbStore, ShoalNode, StateMachineStore};
use shoal_discovery::{JoinSecret, MemberView, MembershipHandle};
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// The Raft of a node.
pub type Raft = ShoalRaft<StateMachineStore<RedbSnapshots>>;

/// How often a node without a certificate looks at membership.
const BOOTSTRAP_TICK: Duration = Duration::from_millis(300);
/// How long the candidate set must stay unchanged before the initializer acts: long enough
/// for mDNS to answer on a LAN, so two machines switched on together (`--bootstrap-expect 1`)
/// see each other before either creates a cluster.
const BOOTSTRAP_SETTLE: Duration = Duration::from_secs(3);
/// One join attempt (connect, handshake, answer; the answer waits for a commit).
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a write may take, retries included (leader changes, forwarding).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// One forwarded write.
const FORWARD_TTL: Duration = Duration::from_secs(5);
/// How often the state watcher and the leader loop run.
const WATCH_TICK: Duration = Duration::from_millis(500);
/// Least time between two passes of the watch loop, however fast entries are applied.
const WATCH_MIN_GAP: Duration = Duration::from_millis(20);
/// How often the certificate is checked for renewal, at most (short lifetimes check more
/// often: a thirtieth of the lifetime).
const RENEW_CHECK_MAX: Duration = Duration::from_secs(30);

/// Raft timing; the defaults suit a LAN, slow SD-card Pis may want longer ones.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self { heartbeat_ms: 150, election_timeout_min_ms: 800, election_timeout_max_ms: 1600 }
    }
}

/// What the controller needs, validated by the CLI.
#[derive(Clone)]
pub struct ControlConfig {
    pub data_dir: std::path::PathBuf,
    pub secret: JoinSecret,
    /// The CA a `shoal2-` token pins: joins answered with another CA are refused, and this
    /// node never founds a cluster (the token names one that exists).
    pub ca_pin: Option<shoal_secret::CaPin>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Where this node's gossip socket is bound; its one TCP port (Raft, joins, ...) is the
    /// same address and port number (`crate::port`).
    pub bind: SocketAddr,
    /// The gossip address peers use; they dial the same address over TCP.
    pub advertise: SocketAddr,
    pub bootstrap_expect: usize,
    pub target_voters: usize,
    pub timing: RaftTiming,
    pub cert_lifetime: Duration,
    /// A voter down this long is replaced by a healthy learner (autopilot).
    pub dead_voter_after: Duration,
    /// A node down this long has its tasks placed elsewhere.
    pub reschedule_after: Duration,
    /// The Docker Engine's unix socket; `None`: `DOCKER_HOST` or `/var/run/docker.sock`.
    pub docker_socket: Option<std::path::PathBuf>,
    /// A bug planted on purpose in the shared controller (tests only: `--planted-bug`).
    pub planted: Option<PlantedBug>,
}

/// Where the node is on its way into the cluster.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Waiting (for members, for the view to settle, for the initializer), with why.
    Bootstrapping(String),
    /// Trying to get a certificate from the cluster; the last failure, if any.
    Joining(String),
    /// In the cluster.
    Running(Arc<Running>),
}

/// A node's controller; cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ControlConfig,
    id: NodeId,
    key: Arc<rcgen::KeyPair>,
    membership: MembershipHandle,
    files: TrustFiles,
    store: RedbStore,
    phase: Mutex<Phase>,
    /// The node's one TCP port; Raft and joins are routed on it once this node holds a
    /// certificate. Taken (and so closed) at shutdown.
    port: Mutex<Option<Arc<PortServer>>>,
    /// This node's engine as an image store (the image service, the runner, the API).
    images: Arc<crate::images::docker_store::LocalDocker>,
    /// Why Raft stopped on its own (a storage error, a panic): the agent exits non-zero on
    /// it, so a supervisor restarts the process, instead of gossiping on without Raft.
    fatal: tokio::sync::watch::Sender<Option<String>>,
    /// Set by [`Control::shutdown`]: Raft stopping then is expected.
    stopping: std::sync::atomic::AtomicBool,
}

/// The running half: Raft, its network and servers, the credentials.
pub struct Running {
    pub raft: Raft,
    /// Mutual TLS with the other nodes for the image protocol (`crate::images`).
    pub image_tls: MutualTls,
    /// Mutual TLS with the other nodes for forwarded Docker API requests
    /// (`crate::dockerapi::proxy`).
    pub docker_tls: MutualTls,
    pub network: RaftNetwork,
    pub creds: Arc<NodeCredentials>,
    pub revoked: Revocations,
    pub ca_der: CertificateDer<'static>,
    cert: Mutex<StoredCert>,
    /// The CA this node created, until the CA is committed.
    pending_ca: Mutex<Option<(String, pki::SealedCaKey)>>,
    /// The issuer rebuilt from the committed (or pending) CA, unsealed once.
    issuer: Mutex<Option<Arc<Issuer>>>,
    ctl: std::sync::Weak<Inner>,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this node is not part of the cluster yet")]
    NotInCluster,
    #[error("no leader could be reached within {0:?}: the cluster may have lost its quorum, or this node is cut off from it ({1})")]
    NoLeader(Duration, String),
    /// (No `#[source]`: the message already holds the rejection's text, and error chains
    /// printed with `{:#}` would repeat it.)
    #[error("the cluster refused the change: {0}")]
    Rejected(shoal_consensus::Rejected),
    /// The leader refused this node the write (a worker asked for a manager's write).
    #[error("{0}")]
    NotAllowed(String),
}

/// Watches `raft` until it stops, then tells `ctl` why (a storage error, a panic, or a stop
/// nobody asked for).
async fn raft_end(ctl: Control, raft: Raft) {
    use shoal_consensus::openraft::async_runtime::WatchReceiver;
    let mut rx = raft.metrics();
    loop {
        if let Err(fatal) = &rx.borrow_watched().running_state {
            ctl.raft_stopped(fatal.to_string());
            return;
        }
        if rx.changed().await.is_err() {
            ctl.raft_stopped("its core task ended".into());
            return;
        }
    }
}

impl Control {
    /// Opens the Raft store and starts the controller's task. If the data dir holds a
    /// certificate, Raft starts at once; otherwise the bootstrap loop runs.
    pub async fn start(
        cfg: ControlConfig,
        id: NodeId,
        key_pem: &str,
        membership: MembershipHandle,
        port: Arc<PortServer>,
    ) -> Result<Self> {
        let key = Arc::new(rcgen::KeyPair::from_pem(key_pem).context("cannot load the node key")?);
        let files = TrustFiles::new(&cfg.data_dir);
        let cfg_socket = cfg.docker_socket.clone();
        let store = RedbStore::open(&files.raft_dir()).context("cannot open the Raft store")?;
        let inner = Arc::new(Inner {
            cfg,
            id,
            key,
            membership,
            files,
            store,
            phase: Mutex::new(Phase::Bootstrapping("starting".into())),
            port: Mutex::new(Some(port)),
            images: crate::images::docker_store::LocalDocker::new(cfg_socket),
            fatal: tokio::sync::watch::Sender::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        if let Some(bug) = inner.cfg.planted {
            tracing::error!(bug = bug.name(), "this node runs with a bug planted on purpose (--planted-bug, {}), for tests; never use it for real", PlantedBug::ENV);
        }
        let ctl = Control { inner };
        match ctl.inner.files.load_cert()? {
            Some(stored) if stored.info.node_id == id => {
                if let Some(pin) = ctl.inner.cfg.ca_pin.filter(|pin| !pin.matches(&stored.ca)) {
                    return Err(anyhow!(
                        "this node's cluster CA ({}, digest {}) is not the one the token pins ({pin}): the token is for another cluster. \
                         Start it with its own cluster's token, or move {} away to join the token's cluster as a new node",
                        ctl.inner.files.ca_path().display(),
                        shoal_secret::CaPin::of_der(&stored.ca),
                        ctl.inner.cfg.data_dir.display(),
                    ));
                }
                if stored.info.is_expired(SystemTime::now()) {
                    // E.g. the whole cluster was off for longer than a certificate lives. Every
                    // node holds the secret and its copy of the CA, so it renews from that at
                    // once (see `renew_if_due`), and the links come back as nodes renew.
                    tracing::warn!(expired = ?stored.info.not_after, "this node's certificate has expired; renewing it from this node's copy of the cluster CA");
                } else {
                    tracing::info!(expires = ?stored.info.not_after, "found this node's certificate; starting Raft");
                }
                let pending = ctl.inner.files.load_pending_ca()?;
                // A certificate with a Raft store that holds nothing: the log was lost (the
                // file deleted, a data dir restored without it). If this node is a voter now
                // (its certificate's role may lag a promotion, so it cannot tell), starting
                // would make a voter with an empty log, which may help elect a leader that
                // lacks committed writes. (A founder that stopped between its certificate and
                // its first Raft write still has its pending CA, and goes on.)
                let lost = ctl.inner.store.holds_nothing().context("cannot read the Raft store")?;
                if lost && pending.is_none() {
                    return Err(anyhow!(
                        "this node holds a certificate of the cluster ({}) but its Raft store ({}) holds nothing: its Raft log is lost, \
                         and a node that may be a voter must not start with an empty log (it could help elect a leader that lacks committed writes). \
                         To bring this machine back: on a healthy node run `shoal node rm {id}`, then move {} away and start \
                         the agent again: it joins as a new node",
                        ctl.inner.files.cert_path().display(),
                        ctl.inner.files.raft_dir().display(),
                        ctl.inner.cfg.data_dir.display(),
                    ));
                }
                ctl.start_running(stored, pending, false).await?;
            }
            Some(stored) => {
                return Err(anyhow!(
                    "the certificate in {} belongs to node {}, not to this node ({id}); remove node.crt and ca.crt to join again",
                    ctl.inner.files.cert_path().display(),
                    stored.info.node_id
                ));
            }
            None => {}
        }
        if !matches!(ctl.phase(), Phase::Running(_)) {
            let c = ctl.clone();
            tokio::spawn(async move { c.bootstrap_loop().await });
        }
        tokio::spawn(runner::run_tasks(ctl.clone()));
        Ok(ctl)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn phase(&self) -> Phase {
        self.inner.phase.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_phase(&self, phase: Phase) {
        *self.inner.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    pub fn running(&self) -> Option<Arc<Running>> {
        match self.phase() {
            Phase::Running(r) => Some(r),
            _ => None,
        }
    }

    pub fn membership(&self) -> &MembershipHandle {
        &self.inner.membership
    }

    pub fn config(&self) -> &ControlConfig {
        &self.inner.cfg
    }

    /// This node's engine as an image store.
    pub fn images(&self) -> Arc<crate::images::docker_store::LocalDocker> {
        self.inner.images.clone()
    }

    /// Commits `cmd` through the leader.
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        let running = self.running().ok_or(WriteError::NotInCluster)?;
        running.write(cmd).await
    }

    /// Resolves with the reason once Raft has stopped on its own (never while it runs, nor
    /// after [`Self::shutdown`]).
    pub async fn fatal(&self) -> String {
        let mut rx = self.inner.fatal.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Stops Raft and the servers (before the process exits).
    /// If this node leads, hands leadership to the most caught-up other voter and waits (at
    /// most `within`) until another node leads, so that a graceful stop costs the cluster no
    /// election timeout. Returns how long the handover took, `None` when there was none.
    pub async fn hand_over_leadership(&self, within: Duration) -> Option<Duration> {
        let running = self.running()?;
        let me = RaftNodeId(self.inner.id);
        let metrics = running.metrics();
        if metrics.current_leader != Some(me) {
            return None;
        }
        let view = shoal_consensus::duties::RaftView::from_metrics(&metrics);
        let target = shoal_consensus::duties::handover_target(&view, self.inner.id)?;
        let started = std::time::Instant::now();
        if let Err(e) = running.raft.trigger().transfer_leader(RaftNodeId(target)).await {
            tracing::warn!(error = %e, "could not hand leadership over");
            return None;
        }
        while started.elapsed() < within {
            let leader = running.metrics().current_leader;
            if leader.is_some() && leader != Some(me) {
                let took = started.elapsed();
                tracing::info!(to = %target.short(), ms = took.as_millis() as u64, "handed leadership over before stopping");
                return Some(took);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!(to = %target.short(), "leadership was not taken over in time; stopping anyway (the others elect a leader)");
        None
    }

    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(running) = self.running() {
            if let Some(port) = self.inner.port.lock().unwrap_or_else(PoisonError::into_inner).take() {
                port.unroute(RAFT_ALPN);
                port.unroute(JOIN_ALPN);
                port.unroute(crate::images::IMAGE_ALPN);
            }
            let _ = running.raft.shutdown().await;
        }
    }

    async fn bootstrap_loop(self) {
        let mut core = BootstrapCore::new(self.inner.id, self.inner.cfg.bootstrap_expect, BOOTSTRAP_SETTLE.as_millis() as u64, now_ms())
            .joining_only(self.inner.cfg.ca_pin.is_some());
        let mut last_logged = String::new();
        loop {
            tokio::time::sleep(BOOTSTRAP_TICK).await;
            if matches!(self.phase(), Phase::Running(_)) {
                return;
            }
            let Ok(members) = self.inner.membership.members().await else { return };
            let decision = core.step(&members, now_ms());
            let result = match decision {
                BootstrapDecision::Initialize { voters } => {
                    tracing::info!(expected = voters.len(), "this node has the lowest id of the expected members: creating the cluster");
                    self.initialize().await
                }
                BootstrapDecision::JoinExisting { via } => self.join_via(&members, &via).await,
                BootstrapDecision::AwaitInitializer { initializer } => {
                    self.set_phase(Phase::Bootstrapping(format!("waiting for {} to create the cluster", initializer.short())));
                    Ok(())
                }
                BootstrapDecision::Wait { reason } => {
                    self.set_phase(Phase::Bootstrapping(reason));
                    Ok(())
                }
                BootstrapDecision::Member => Ok(()),
            };
            if let Err(e) = result {
                let text = format!("{e:#}");
                if text != last_logged {
                    tracing::warn!(error = %text, "could not enter the cluster yet; retrying");
                    last_logged = text.clone();
                }
                self.set_phase(Phase::Joining(text));
            }
        }
    }

    /// Creates the CA and this node's certificate, then starts Raft as the only voter.
    async fn initialize(&self) -> Result<()> {
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let ca_key = rcgen::KeyPair::generate().context("cannot generate the CA key")?;
        let ca = ClusterCa::create(self.inner.cfg.secret.cluster_id(), ca_key, SystemTime::now(), &mut rng)?;
        let sealed = ca.seal_key(&self.inner.cfg.secret, &mut rng);
        self.inner.files.save_pending_ca(ca.cert_pem(), &sealed)?;
        let issuer = Issuer::new(ca, &self.inner.cfg.secret, self.issue_policy());
        let request = JoinRequest::new(&self.inner.cfg.secret, &self.inner.key, &mut rng)?;
        let grant = self.own_grant(NodeRole::Manager);
        let response = issuer.answer_join(&request, &grant, &BTreeSet::new(), SystemTime::now(), &mut rng)?;
        let granted = response.verify(&self.inner.cfg.secret, &request, &self.inner.key)?;
        self.inner.files.save_cert(&granted.cert_der, &granted.ca_der)?;
        let stored = StoredCert { cert: granted.cert_der, ca: granted.ca_der, info: granted.info };
        self.start_running(stored, Some((issuer.ca().cert_pem().to_string(), sealed)), true).await
    }

    /// Asks the members in `via` (in order) for a certificate through their join ports.
    async fn join_via(&self, members: &[MemberView], via: &[NodeId]) -> Result<()> {
        let mut errors = Vec::new();
        for id in via {
            let Some(member) = members.iter().find(|m| m.id == *id) else { continue };
            let addr = member.addr;
            self.set_phase(Phase::Joining(format!("asking {} at {addr} for a certificate", id.short())));
            match joinnet::request_pinned_certificate(addr, &self.inner.cfg.secret, self.inner.cfg.ca_pin, &self.inner.key, JOIN_TIMEOUT).await {
                Ok(granted) => {
                    let role = granted.info.role.map_or("none", |r| r.as_str());
                    tracing::info!(via = %id.short(), %addr, role, "received a certificate from the cluster");
                    self.inner.files.save_cert(&granted.cert_der, &granted.ca_der)?;
                    let stored = StoredCert { cert: granted.cert_der, ca: granted.ca_der, info: granted.info };
                    return self.start_running(stored, None, false).await;
                }
                Err(e) => errors.push(format!("{e}")),
            }
        }
        Err(anyhow!("no member gave a certificate: {}", errors.join("; ")))
    }

    /// What this node grants itself (its own certificate and renewals): its advertised IP
    /// and its name as SANs.
    fn own_grant(&self, role: NodeRole) -> NodeGrant {
        shoal_control::own_grant(role, self.inner.cfg.advertise, &self.inner.cfg.name)
    }

    fn issue_policy(&self) -> IssuePolicy {
        IssuePolicy { cert_lifetime: self.inner.cfg.cert_lifetime, ..IssuePolicy::default() }
    }

    fn raft_config(&self) -> Result<Arc<Config>> {
        let t = self.inner.cfg.timing;
        let config = shoal_consensus::types::with_safety(Config {
            cluster_name: format!("shoal-{}", self.inner.cfg.secret.cluster_id()),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_timeout_min_ms,
            election_timeout_max: t.election_timeout_max_ms,
            // A snapshot of a home-lab cluster is small, but a Pi on Wi-Fi is slow.
            install_snapshot_timeout: 30_000,
            snapshot_policy: shoal_consensus::openraft::SnapshotPolicy::LogsSinceLast(5_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        });
        Ok(Arc::new(config.validate().context("invalid Raft timing (--raft-* flags)")?))
    }

    async fn start_running(&self, stored: StoredCert, pending_ca: Option<(String, pki::SealedCaKey)>, initialize: bool) -> Result<()> {
        let id = self.inner.id;
        let raft_id = RaftNodeId(id);
        let creds = NodeCredentials::new(stored.cert.clone(), &self.inner.key)?;
        let stored_ca = stored.ca.clone();
        let revoked = Revocations::new();
        let tls = MutualTls::new(&stored.ca, creds.clone(), revoked.clone())?;
        let network = RaftNetwork::new(raft_id, tls.clone(), ClientConfig::default());
        let (log, sm) = self.inner.store.open_raft_storage();
        let raft = with_seed(os_seed(), Raft::new(raft_id, self.raft_config()?, network.clone(), log, sm))
            .await
            .context("cannot start Raft")?;
        let port = self.inner.port.lock().unwrap_or_else(PoisonError::into_inner).clone().ok_or_else(|| anyhow!("shutting down"))?;
        let image_tls = tls.with_alpn(crate::images::IMAGE_ALPN);
        let docker_tls = tls.with_alpn(crate::dockerapi::proxy::DOCKER_ALPN);
        port.route(crate::images::IMAGE_ALPN, crate::images::service::ImageService::new(image_tls.clone(), self.inner.images.clone()));
        port.route(RAFT_ALPN, RaftService::new(tls, Arc::new(raft.clone()), ServerConfig { revoked: Some(revoked.clone()), ..ServerConfig::default() }));
        let running = Arc::new(Running {
            raft: raft.clone(),
            image_tls,
            docker_tls,
            network,
            creds: creds.clone(),
            revoked,
            ca_der: stored.ca.clone(),
            cert: Mutex::new(stored),
            pending_ca: Mutex::new(pending_ca),
            issuer: Mutex::new(None),
            ctl: Arc::downgrade(&self.inner),
        });
        let authority: Arc<dyn JoinAuthority> = Arc::new(Authority(Arc::downgrade(&running)));
        port.route(JOIN_ALPN, JoinService::new(creds.clone(), authority, JoinServerConfig::default())?);
        // Users' endpoints (client certificates): the Docker API and the shoal API. The
        // revoked set is loaded first, so a revoked client is refused from the first
        // connection after a restart (the watch loop keeps it current from then on).
        if let Ok(state) = running.state().await {
            running.revoked.replace(state.refused_ids());
        }
        crate::remote::route_user_endpoints(&port, &stored_ca, creds, running.revoked.clone(), self.clone())?;
        if initialize {
            let me = ShoalNode::new(self.inner.cfg.name.clone(), self.inner.cfg.advertise);
            match raft.initialize(BTreeMap::from([(raft_id, me)])).await {
                Ok(()) => tracing::info!("initialised Raft; this node leads until the others join"),
                Err(e) => tracing::info!(error = %e, "Raft was already initialised"),
            }
        }
        self.set_phase(Phase::Running(running.clone()));
        tracing::info!(port = %port.local_addr(), "serving Raft and joins (TLS) on the node's TCP port");
        tokio::spawn(leader::run(self.clone(), running.clone()));
        tokio::spawn(raft_end(self.clone(), running.raft.clone()));
        let c = self.clone();
        tokio::spawn(async move { c.watch_loop(running).await });
        Ok(())
    }

    /// Keeps TLS's revoked set and the `in_cluster` fact in step with the replicated state;
    /// renews the certificate. (The leader's duties run on their own task, `leader::run`.)
    async fn watch_loop(self, running: Arc<Running>) {
        let mut announced = false;
        let mut revoked_logged = false;
        // Checked at the first tick (an expired certificate is renewed at once), then
        // periodically.
        let mut last_renew_check: Option<tokio::time::Instant> = None;
        let mut seen = None;
        loop {
            // At once when a new entry is applied (a start, a report: the scheduler places
            // without waiting out a tick), else every WATCH_TICK; never more often than
            // WATCH_MIN_GAP.
            tokio::time::sleep(WATCH_MIN_GAP).await;
            running.applied_change(seen, WATCH_TICK).await;
            seen = running.applied_index();
            let Ok(state) = running.state().await else { return };
            running.revoked.replace(state.refused_ids());
            if state.ca.is_some() && !announced {
                if self.inner.membership.set_in_cluster(true).await.is_err() {
                    return;
                }
                announced = true;
                tracing::info!("this node holds the cluster state");
            }
            if state.revoked.contains(&self.inner.id) && !revoked_logged {
                tracing::error!("this node was removed from the cluster (`shoal node rm`); its certificate is refused everywhere. Wipe its data dir to join again as a new node.");
                revoked_logged = true;
            }
            let period = RENEW_CHECK_MAX.min(self.inner.cfg.cert_lifetime / 30);
            if last_renew_check.is_none_or(|t| t.elapsed() >= period) {
                last_renew_check = Some(tokio::time::Instant::now());
                if let Err(e) = self.renew_if_due(&running, &state).await {
                    tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed; will retry");
                }
            }
        }
    }

    /// Says why Raft stopped, unless this node is shutting down.
    fn raft_stopped(&self, why: String) {
        if self.inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        tracing::error!("Raft stopped on this node: {why}; the agent exits so that it can be restarted");
        self.inner.fatal.send_replace(Some(why));
    }

    async fn renew_if_due(&self, running: &Running, state: &ClusterState) -> Result<()> {
        let info = running.cert.lock().unwrap_or_else(PoisonError::into_inner).info.clone();
        let raft = shoal_consensus::duties::RaftView::from_metrics(&running.metrics());
        let cfg = &self.inner.cfg;
        let Some(grant) = shoal_control::renewal_due(&info, &raft, self.inner.id, cfg.advertise, &cfg.name, SystemTime::now()) else {
            return Ok(());
        };
        if state.ca.is_none() {
            return Ok(()); // nothing can issue before the CA is committed
        }
        tracing::info!(expires = ?info.not_after, role = %grant.role, "renewing this node's certificate");
        // Issued here, from this node's copy of the replicated CA: renewal needs no leader (after
        // a long power cut every certificate may have expired, and no leader can be elected
        // until they are renewed). The cluster records it below, when a leader is reachable.
        let issuer = running.issuer(state).map_err(|e| anyhow!("{e}"))?;
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let request = JoinRequest::new(&self.inner.cfg.secret, &self.inner.key, &mut rng)?;
        let response = issuer.answer_join(&request, &grant, &state.revoked, SystemTime::now(), &mut rng)?;
        let granted = response.verify(&self.inner.cfg.secret, &request, &self.inner.key)?;
        self.inner.files.save_cert(&granted.cert_der, &granted.ca_der)?;
        running.creds.replace(granted.cert_der.clone(), &self.inner.key)?;
        let issued = shoal_consensus::IssuedCert { serial: granted.info.serial.clone(), not_after: pki::unix_secs(granted.info.not_after) };
        *running.cert.lock().unwrap_or_else(PoisonError::into_inner) =
            StoredCert { cert: granted.cert_der, ca: granted.ca_der, info: granted.info };
        if let Err(e) = running.write(Command::RecordIssued { node: self.inner.id, cert: issued }).await {
            tracing::info!(error = %e, "the renewed certificate is not recorded yet; the leader records it later");
        }
        tracing::info!("certificate renewed");
        Ok(())
    }
}

use rand::SeedableRng;

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Running {
    /// The latest Raft metrics of this node.
    pub fn metrics(&self) -> shoal_consensus::types::RaftMetrics {
        use shoal_consensus::openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// The index of the last log entry applied on this node.
    pub fn applied_index(&self) -> Option<u64> {
        use shoal_consensus::openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().last_applied.map(|l| l.index)
    }

    /// Waits until an entry after `seen` is applied on this node, or `at_most` passes
    /// (returns at once if one already is). Loops that act on the replicated state wait
    /// here instead of sleeping a fixed tick, so a change is acted on as soon as it is
    /// applied, and a quiet cluster still gets its periodic pass.
    pub async fn applied_change(&self, seen: Option<u64>, at_most: Duration) {
        use shoal_consensus::openraft::async_runtime::WatchReceiver;
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::sleep(at_most);
        tokio::pin!(deadline);
        loop {
            if rx.borrow_watched().last_applied.map(|l| l.index) != seen {
                return;
            }
            tokio::select! {
                () = &mut deadline => return,
                changed = rx.changed() => {
                    if changed.is_err() {
                        // Raft stopped: no change will come; keep the caller's pace.
                        deadline.await;
                        return;
                    }
                }
            }
        }
    }

    /// The replicated state as applied on this node: a shared snapshot (cheap to take, and
    /// it stays as it was while later entries are applied).
    pub async fn state(&self) -> Result<Arc<ClusterState>> {
        self.raft
            .with_state_machine(|sm: &mut StateMachineStore<RedbSnapshots>| Box::pin(async move { sm.shared() }))
            .await
            .map_err(|e| anyhow!("Raft stopped: {e}"))
    }

    /// Mutual TLS for forwarded Docker API requests.
    pub fn docker_tls(&self) -> MutualTls {
        self.docker_tls.clone()
    }

    /// This node's certificate.
    pub fn cert(&self) -> StoredCert {
        self.cert.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn pending_ca(&self) -> Option<(String, pki::SealedCaKey)> {
        self.pending_ca.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn clear_pending_ca(&self) {
        self.pending_ca.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    /// Commits `cmd`: proposes it here when this node leads, else forwards it to the leader;
    /// retries across leader changes until [`WRITE_TIMEOUT`].
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let mut last = String::from("no leader known");
        loop {
            let metrics = self.metrics();
            let me = metrics.id;
            match metrics.current_leader {
                Some(leader) if leader == me => {
                    match shoal_consensus::propose(&self.raft, cmd.clone()).await {
                        Ok(written) => return written.data.map_err(WriteError::Rejected),
                        Err(e) => last = e.to_string(),
                    }
                }
                Some(leader) => match metrics.membership_config.get_node(&leader).cloned() {
                    // A leader that is cut off answers nothing: give its forward up as soon
                    // as this node stops seeing it as the leader (an election started),
                    // instead of waiting out the forward's TTL.
                    Some(node) => match tokio::select! {
                        answer = self.network.forward(leader, &node, cmd.clone(), FORWARD_TTL) => answer,
                        () = self.leader_moves_from(leader) => {
                            Err(format!("leader {leader} lost its leadership while a write was forwarded to it"))
                        }
                    } {
                        Ok(Ok(committed)) => {
                            // Read-your-writes on this node: wait (bounded) until it has
                            // applied the entry too, so the caller's next read sees it.
                            let applied = self
                                .raft
                                .wait(Some(FORWARD_TTL))
                                .applied_index_at_least(Some(committed.index), "forwarded write applied here")
                                .await;
                            if applied.is_err() {
                                tracing::debug!(index = committed.index, "a forwarded write is committed but not yet applied here");
                            }
                            return committed.response.map_err(WriteError::Rejected);
                        }
                        Ok(Err(crate::raftnet::rpc::ForwardRefused::NotAllowed(why))) => return Err(WriteError::NotAllowed(why)),
                        Ok(Err(refused)) => last = refused.to_string(),
                        Err(e) => last = e,
                    },
                    None => last = format!("leader {leader} is not in the membership config"),
                },
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WriteError::NoLeader(WRITE_TIMEOUT, last));
            }
            // Retry when the leader changes (a new one is known), and at least every 200 ms.
            let seen_leader = self.metrics().current_leader;
            let _ = tokio::time::timeout(Duration::from_millis(200), self.leader_moves_from_opt(seen_leader)).await;
        }
    }

    /// Resolves once this node no longer sees `leader` as the leader (never, if Raft stops).
    async fn leader_moves_from(&self, leader: RaftNodeId) {
        self.leader_moves_from_opt(Some(leader)).await
    }

    /// Resolves once this node's known leader differs from `leader` (never, if Raft stops).
    async fn leader_moves_from_opt(&self, leader: Option<RaftNodeId>) {
        use shoal_consensus::openraft::async_runtime::WatchReceiver;
        let mut rx = self.raft.metrics();
        loop {
            if rx.borrow_watched().current_leader != leader {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The issuer of the committed CA (or of the CA this node created, before it is
    /// committed), unsealed with the join secret once and kept.
    fn issuer(&self, state: &ClusterState) -> Result<Arc<Issuer>, Refusal> {
        if let Some(issuer) = self.issuer.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Ok(issuer);
        }
        let ctl = self.ctl.upgrade().ok_or_else(|| Refusal::Unavailable("shutting down".into()))?;
        let policy = IssuePolicy { cert_lifetime: ctl.cfg.cert_lifetime, ..IssuePolicy::default() };
        let issuer = shoal_control::issuer_from_state(state, self.pending_ca().as_ref(), &ctl.cfg.secret, policy).map_err(|e| match e {
            shoal_control::IssuerError::Pki(e) => Refusal::Pki(e),
            other => Refusal::Unavailable(other.to_string()),
        })?;
        let issuer = Arc::new(issuer);
        if state.ca.is_some() {
            *self.issuer.lock().unwrap_or_else(PoisonError::into_inner) = Some(issuer.clone());
        }
        Ok(issuer)
    }

    /// Issues a client certificate named `name` for the key of `csr_der` and records the
    /// client in the replicated state before answering (so every client the cluster
    /// trusts is listed, and `shoal client rm` can revoke it). Gives the certificate and
    /// what was recorded.
    pub async fn issue_client(
        &self,
        name: &str,
        csr_der: &[u8],
        lifetime: Duration,
    ) -> Result<(CertificateDer<'static>, pki::ClientCertInfo)> {
        let state = self.state().await?;
        if state.clients.records.contains_key(name) {
            return Err(anyhow!(shoal_consensus::Rejected::ClientExists(name.to_string())));
        }
        let issuer = self.issuer(&state).map_err(|e| anyhow!("{e}"))?;
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let (cert, info) = issuer.issue_client(csr_der, name, lifetime, &state.refused_ids(), SystemTime::now(), &mut rng)?;
        let client = shoal_consensus::state::ClientRecord {
            id: info.id,
            serial: info.serial.clone(),
            not_after: pki::unix_secs(info.not_after),
            created_ms: now_ms(),
        };
        self.write(Command::AddClient { name: name.to_string(), client }).await?;
        Ok((cert, info))
    }

    /// Answers a join (or renewal) request: checks it, issues the certificate, and commits
    /// the node's registration and the issued certificate before answering, so a node never
    /// holds a certificate the cluster does not know about.
    pub async fn answer_join(&self, request: &JoinRequest, state: &ClusterState) -> Result<pki::JoinResponse, Refusal> {
        let ctl = self.ctl.upgrade().ok_or_else(|| Refusal::Unavailable("shutting down".into()))?;
        let issuer = self.issuer(state)?;
        let members = ctl.membership.members().await.map_err(|_| Refusal::Unavailable("shutting down".into()))?;
        let voters = shoal_consensus::duties::RaftView::from_metrics(&self.metrics()).voters;
        let ctx = shoal_control::JoinContext { issuer: &issuer, state, members: &members, voters: &voters, planted: ctl.cfg.planted };
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let answer = shoal_control::answer_join(&ctx, request, SystemTime::now(), &mut rng).map_err(|e| match e {
            shoal_control::JoinRefusal::Pki(e) => Refusal::Pki(e),
            other => Refusal::Unavailable(other.to_string()),
        })?;
        for command in answer.writes {
            let what = shoal_control::join::purpose(&command);
            self.write(command).await.map_err(|e| Refusal::Unavailable(format!("cannot {what}: {e}")))?;
        }
        Ok(answer.response)
    }
}

/// Milliseconds since the Unix epoch of `t` (0 before it): the time unit of the pure rules,
/// of membership's `since_ms`, and of the timestamps in the replicated state.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    epoch_ms(SystemTime::now())
}

/// The join server's authority: the running node (any member can answer; the writes go
/// through the leader).
struct Authority(std::sync::Weak<Running>);

impl JoinAuthority for Authority {
    fn answer(
        &self,
        request: JoinRequest,
        _peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<pki::JoinResponse, Refusal>> + Send + '_>> {
        Box::pin(async move {
            let running = self.0.upgrade().ok_or_else(|| Refusal::Unavailable("shutting down".into()))?;
            let state = running.state().await.map_err(|e| Refusal::Unavailable(e.to_string()))?;
            let answer = running.answer_join(&request, &state).await;
            match &answer {
                Ok(_) => tracing::info!(node = %request.node_id.short(), "issued a certificate"),
                Err(e) => tracing::info!(node = %request.node_id.short(), reason = %e, "refused a join"),
            }
            answer
        })
    }
}
