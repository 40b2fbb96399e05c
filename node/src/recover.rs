//! `shoal recover`: bring a cluster back from one surviving manager after most voters are
//! gone for good (quorum lost: no leader can be elected, nothing can be written). Run on the
//! survivor with its agent stopped; the store's half is
//! `shoal_consensus::store::recover` (the survivor becomes the only voter, the lost voters
//! are revoked). Starting the agent afterwards elects it alone; other machines then join
//! (or rejoin, with fresh data dirs) as usual and the autopilot promotes managers again.

use crate::control::files::RAFT_DIR;
use anyhow::{bail, Context, Result};
use shoal_consensus::store::disk::{RedbStore, DB_FILE};
use shoal_consensus::RaftNodeId;
use std::path::Path;

/// What `shoal recover` explains before it is confirmed with `--yes`.
pub const WARNING: &str = "\
`shoal recover` makes this node the only voter of its cluster, from what its own Raft log holds, and revokes every other voter.
Use it only when most managers are gone for good (destroyed, or their disks lost) and the cluster cannot elect a leader:
  - writes the lost managers accepted but never replicated to this node are lost;
  - if a revoked machine comes back with its old data dir it is refused: move that data dir away and start it to join as a new node;
  - a lost manager that comes back together with another could still elect a leader between them on the old membership: keep them off.
Stop this node's agent first, then run `shoal recover --yes` with the same --data-dir, and start the agent again.";

/// Recovers the data dir's Raft store; returns the report for the user.
pub fn run(data_dir: &Path) -> Result<String> {
    if !data_dir.join("node.key").exists() {
        bail!("{} holds no node key: it is not a shoal data dir (give the node's --data-dir)", data_dir.display());
    }
    let identity = crate::identity::NodeIdentity::load_or_create(data_dir)?;
    let raft_dir = data_dir.join(RAFT_DIR);
    if !raft_dir.join(DB_FILE).exists() {
        bail!("{} holds no Raft store: this node never was a member of a cluster, so there is nothing to recover from", data_dir.display());
    }
    let store = RedbStore::open(&raft_dir).with_context(|| {
        format!("cannot open the Raft store in {} (is this node's agent still running? stop it first)", raft_dir.display())
    })?;
    let recovery = store.recover_as_sole_voter(RaftNodeId(identity.id)).context("cannot recover")?;
    let names = |ids: &[RaftNodeId]| ids.iter().map(|id| id.node_id().short()).collect::<Vec<_>>().join(", ");
    let mut report = format!(
        "node {} is now the only voter of its cluster (it was one of {} voters); revoked: {}",
        identity.id.short(),
        recovery.voters_before.len(),
        names(&recovery.dropped)
    );
    if !recovery.learners.is_empty() {
        report.push_str(&format!("; kept as non-voters: {}", names(&recovery.learners)));
    }
    report.push_str(".\nStart the agent: it elects itself and takes writes. Other machines join as usual; a revoked one joins as a new node once its data dir is moved away.");
    Ok(report)
}
