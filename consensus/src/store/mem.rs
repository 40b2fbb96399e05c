//! In-memory Raft storage with the same semantics as the redb store, for tests and the
//! simulator.
//!
//! Handles are cheap clones sharing one store, so a test or the simulator can drop a node's
//! `Raft` ("crash"), keep the handles, and start a new `Raft` on them ("restart"). Today every
//! write counts as synced the moment the call returns. **Extension point** for the simulator's
//! "a crash keeps only what was synced": split each store into a durable part and a pending
//! part, move pending to durable where the real store would have fsynced (end of `append`,
//! `save_vote`, `purge`, `truncate_after`, snapshot `save`), and give `crash()` the choice to
//! drop the pending part.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::OptionalSend;
use openraft::RaftLogReader;

use crate::codec::StoredSnapshot;
use crate::store::SnapshotStore;
use crate::store::StateMachineStore;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::TypeConfig;
use crate::types::Vote;

fn poisoned() -> io::Error {
    io::Error::other("in-memory store lock poisoned")
}

#[derive(Debug, Default)]
struct LogInner {
    log: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
}

/// In-memory Raft log: entries, vote, committed and purged log ids.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl MemLogStore {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, LogInner>> {
        self.inner.lock().map_err(|_| poisoned())
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self
            .lock()?
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock()?.vote)
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock()?;
        let last_purged_log_id = inner.last_purged;
        let last_log_id = inner
            .log
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.lock()?.vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.lock()?.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.lock()?.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut inner = self.lock()?;
            for entry in entries {
                inner.log.insert(entry.log_id.index, entry);
            }
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |id| id.index.saturating_add(1));
        let mut inner = self.lock()?;
        let _removed = inner.log.split_off(&first_removed);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut inner = self.lock()?;
        if inner.last_purged.is_none_or(|p| p.index < log_id.index) {
            inner.last_purged = Some(log_id);
        }
        let kept = inner.log.split_off(&log_id.index.saturating_add(1));
        inner.log = kept;
        Ok(())
    }
}

/// In-memory snapshot slot.
#[derive(Clone, Debug, Default)]
pub struct MemSnapshots {
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl SnapshotStore for MemSnapshots {
    fn save(&self, snapshot: &StoredSnapshot) -> io::Result<()> {
        *self.current.lock().map_err(|_| poisoned())? = Some(snapshot.clone());
        Ok(())
    }

    fn load(&self) -> io::Result<Option<StoredSnapshot>> {
        Ok(self.current.lock().map_err(|_| poisoned())?.clone())
    }
}

/// One node's in-memory storage. Clone it to keep the data across a simulated restart.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    /// The Raft log.
    pub log: MemLogStore,
    /// The snapshot slot.
    pub snapshots: MemSnapshots,
}

impl MemStore {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles for a (re)starting node: the shared log, and a fresh transient state machine
    /// over the shared snapshot slot (openraft rebuilds its state on start).
    pub fn open(&self) -> (MemLogStore, StateMachineStore<MemSnapshots>) {
        (
            self.log.clone(),
            StateMachineStore::new(self.snapshots.clone()),
        )
    }
}
