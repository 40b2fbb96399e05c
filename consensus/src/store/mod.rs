//! Raft storage: the log store and the state machine store, on disk ([`disk`], redb) and in
//! memory ([`mem`], for tests and the simulator), behind openraft's `RaftLogStorage` and
//! `RaftStateMachine` traits.
//!
//! **State machine durability.** The state machine is *transient*: [`ClusterState`] lives in
//! memory and only snapshots are persisted (through a [`SnapshotStore`]). The log store
//! persists the committed log id, so on restart openraft's `StorageHelper::get_initial_state`
//! installs the last snapshot and re-applies committed entries from the log. This costs one
//! snapshot write per compaction instead of one state write per commit (SD cards wear out)
//! and keeps apply free of I/O. Nothing committed is lost: every committed entry is either in
//! the durable log or in the durable snapshot (openraft only purges what a snapshot covers).

pub mod disk;
pub mod mem;
pub mod recover;

use std::io;
use std::sync::Arc;

use futures_util::Stream;
use futures_util::StreamExt;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;

use crate::codec;
use crate::codec::StoredSnapshot;
use crate::state::ClusterState;
use crate::types::LogId;
use crate::types::Snapshot;
use crate::types::SnapshotData;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// Where a state machine keeps its latest snapshot. Implementations must make `save` durable
/// before returning (the simulator's in-memory version decides what "durable" means there).
pub trait SnapshotStore: Clone + Send + Sync + 'static {
    /// Replaces the current snapshot.
    fn save(&self, snapshot: &StoredSnapshot) -> io::Result<()>;
    /// The current snapshot, if any.
    fn load(&self) -> io::Result<Option<StoredSnapshot>>;
}

/// The state machine openraft drives: the cluster state in memory, snapshots in `S`.
///
/// The state is shared copy-on-write (`Arc`): readers take [`Self::shared`], a cheap clone
/// of the applied state that stays as it was; applying an entry copies the state only when
/// a reader still holds the previous one.
pub struct StateMachineStore<S: SnapshotStore> {
    state: Arc<ClusterState>,
    snapshots: S,
}

impl<S: SnapshotStore> StateMachineStore<S> {
    /// A state machine that starts empty; openraft restores it from `snapshots` and the log
    /// when the node starts (see the module docs).
    pub fn new(snapshots: S) -> Self {
        Self {
            state: Arc::new(ClusterState::default()),
            snapshots,
        }
    }

    /// The current state (read it through `Raft::with_state_machine` while Raft runs).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The applied state as a shared snapshot (a reference count, not a copy).
    pub fn shared(&self) -> Arc<ClusterState> {
        Arc::clone(&self.state)
    }

    /// The snapshot store.
    pub fn snapshots(&self) -> &S {
        &self.snapshots
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked for it.
pub struct SnapshotBuilder<S: SnapshotStore> {
    state: Arc<ClusterState>,
    snapshots: S,
}

fn to_snapshot(stored: StoredSnapshot) -> Snapshot {
    Snapshot {
        meta: stored.meta,
        snapshot: stored.data,
    }
}

impl<S: SnapshotStore> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<S> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let data = codec::encode_snapshot(&self.state)?;
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
        };
        let stored = StoredSnapshot { meta, data };
        self.snapshots.save(&stored)?;
        tracing::debug!(last = ?stored.meta.last_log_id, bytes = stored.data.len(), "built snapshot");
        Ok(to_snapshot(stored))
    }
}

impl<S: SnapshotStore> RaftStateMachine<TypeConfig> for StateMachineStore<S> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder<S>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + openraft::OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let response = Arc::make_mut(&mut self.state).apply_entry(&entry);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            state: Arc::clone(&self.state),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let state = codec::decode_snapshot(&snapshot)?;
        if state.last_applied != meta.last_log_id || state.membership != meta.last_membership {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot data (last applied {:?}) does not match its metadata (last log id {:?})",
                    state.last_applied, meta.last_log_id
                ),
            ));
        }
        self.snapshots.save(&StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        })?;
        self.state = Arc::new(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.snapshots.load()?.map(to_snapshot))
    }
}

#[cfg(test)]
mod suite_tests;
