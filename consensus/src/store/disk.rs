//! Raft storage on disk in one redb database (`raft.redb` under the node's data dir): the log,
//! the vote, the committed and purged log ids, and the latest snapshot.
//!
//! Every value is encoded through [`crate::codec`] and decoded with its size limit; anything
//! that fails to decode is reported as an `InvalidData` I/O error (openraft then stops the
//! node rather than run on a corrupt log). Writes that Raft relies on (entries, vote, purge,
//! truncation, snapshots) commit with redb's default `Durability::Immediate` (fsync) before
//! the call returns or the flush callback fires. The committed log id is written without a
//! sync: it only speeds up a restart, and is made durable by the next synced write.
//!
//! The calls block on disk I/O inside openraft's tasks; on a multi-threaded tokio runtime the
//! other workers keep running. Moving them to a blocking pool is a possible later change.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use redb::Database;
use redb::Durability;
use redb::ReadableDatabase;
use redb::ReadableTable;
use redb::TableDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::codec::StoredSnapshot;
use crate::codec::MAX_ENTRY_BYTES;
use crate::codec::MAX_META_BYTES;
use crate::codec::MAX_STORED_SNAPSHOT_BYTES;
use crate::store::SnapshotStore;
use crate::store::StateMachineStore;
use crate::store::recover;
use crate::store::recover::RecoverError;
use crate::store::recover::Recovery;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::RaftNodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// File name of the database inside the directory given to [`RedbStore::open`].
pub const DB_FILE: &str = "raft.redb";
/// Layout version of the database, stored under [`META`]`["format"]`.
pub const DB_FORMAT: u32 = 1;

/// Log entries by index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small values: `format`, `vote`, `committed`, `last_purged`.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The latest snapshot under `current`.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const KEY_FORMAT: &str = "format";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "current";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open raft database {path}: {source}")]
    Database { path: PathBuf, source: redb::Error },
    #[error("raft database {path} has layout version {found}, this build reads {DB_FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("raft database {path} is corrupt: {source}")]
    Corrupt { path: PathBuf, source: io::Error },
}

/// Maps any redb error to an I/O error for openraft.
fn db_err(e: impl Into<redb::Error>) -> io::Error {
    io::Error::other(e.into())
}

/// The on-disk store of one node. Cheap to clone (shares the database).
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the database in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let database_err = |e: redb::Error| OpenError::Database {
            path: path.clone(),
            source: e,
        };
        let db = Database::create(&path).map_err(|e| database_err(e.into()))?;
        let store = Self { db: Arc::new(db) };
        // Create the tables and the format marker on first open; check the marker after.
        let found: Option<u32> =
            store
                .get_meta(KEY_FORMAT)
                .map_err(|source| OpenError::Corrupt {
                    path: path.clone(),
                    source,
                })?;
        match found {
            Some(DB_FORMAT) => {}
            Some(found) => return Err(OpenError::Format { path, found }),
            None => {
                let init = || -> Result<(), io::Error> {
                    let txn = store.db.begin_write().map_err(db_err)?;
                    {
                        txn.open_table(LOG).map_err(db_err)?;
                        txn.open_table(SNAPSHOT).map_err(db_err)?;
                        let mut meta = txn.open_table(META).map_err(db_err)?;
                        let bytes = codec::encode::<_, MAX_META_BYTES>(&DB_FORMAT)?;
                        meta.insert(KEY_FORMAT, bytes.as_slice()).map_err(db_err)?;
                    }
                    txn.commit().map_err(db_err)
                };
                init().map_err(|source| OpenError::Corrupt {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(store)
    }

    /// The log store handle.
    pub fn log_store(&self) -> RedbLogStore {
        RedbLogStore {
            store: self.clone(),
        }
    }

    /// The snapshot slot.
    pub fn snapshots(&self) -> RedbSnapshots {
        RedbSnapshots {
            store: self.clone(),
        }
    }

    /// Handles for a starting node: the log store and a fresh transient state machine (openraft
    /// restores it from the snapshot and the log on start).
    pub fn open_raft_storage(&self) -> (RedbLogStore, StateMachineStore<RedbSnapshots>) {
        (self.log_store(), StateMachineStore::new(self.snapshots()))
    }

    /// Whether the store holds nothing Raft wrote: no vote, no log entry, no snapshot and
    /// nothing purged. A node that has a certificate but such a store lost its Raft state
    /// (the file was deleted, or the data dir restored without it): as a voter it could
    /// vote with an empty log and help elect a leader that lacks committed entries.
    pub fn holds_nothing(&self) -> io::Result<bool> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let has = |table: TableDefinition<&str, &[u8]>, key: &str| -> io::Result<bool> {
            match txn.open_table(table) {
                Ok(t) => Ok(t.get(key).map_err(db_err)?.is_some()),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
                Err(e) => Err(db_err(e)),
            }
        };
        if has(META, KEY_VOTE)? || has(META, KEY_LAST_PURGED)? || has(SNAPSHOT, KEY_SNAPSHOT)? {
            return Ok(false);
        }
        match txn.open_table(LOG) {
            Ok(t) => Ok(redb::ReadableTableMetadata::is_empty(&t).map_err(db_err)?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(true),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Makes `me` the sole voter of this store's log (`shoal recover`, with the node
    /// stopped; see [`crate::store::recover`]): appends the entries [`recover::plan`] gives
    /// after the last log id, in one synced transaction.
    pub fn recover_as_sole_voter(&self, me: RaftNodeId) -> Result<Recovery, RecoverError> {
        let snapshot = SnapshotStore::load(&self.snapshots())?;
        let purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        let (mut last, mut membership) = (None::<LogId>, None);
        {
            let table = txn.open_table(LOG).map_err(db_err)?;
            for item in table.iter().map_err(db_err)?.rev() {
                let (index, bytes) = item.map_err(db_err)?;
                let entry = decode_entry(index.value(), bytes.value())?;
                last = last.or(Some(entry.log_id));
                if let EntryPayload::Membership(m) = entry.payload {
                    membership = Some(m);
                    break;
                }
            }
        }
        let from_snapshot = snapshot.as_ref().map(|s| (s.meta.last_log_id, s.meta.last_membership.membership().clone()));
        let last = [last, purged, from_snapshot.as_ref().and_then(|(id, _)| *id)].into_iter().flatten().max();
        let membership = membership.or(from_snapshot.map(|(_, m)| m));
        let (Some(last), Some(membership)) = (last, membership) else { return Err(RecoverError::Empty) };
        let (entries, recovery) = recover::plan(me, last, &membership)?;
        {
            let mut table = txn.open_table(LOG).map_err(db_err)?;
            for entry in &entries {
                let bytes = codec::encode::<_, MAX_ENTRY_BYTES>(entry).map_err(io::Error::from)?;
                table.insert(entry.log_id.index, bytes.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(recovery)
    }

    /// Reads one value of a `&str`-keyed table; a missing table reads as empty.
    fn get<T: DeserializeOwned, const LIMIT: usize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        match table.get(key).map_err(db_err)? {
            None => Ok(None),
            Some(guard) => Ok(Some(codec::decode::<T, LIMIT>(guard.value())?)),
        }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        self.get::<T, MAX_META_BYTES>(META, key)
    }

    /// Writes one value of a `&str`-keyed table in its own transaction.
    fn put<T: Serialize, const LIMIT: usize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> io::Result<()> {
        let bytes = codec::encode::<T, LIMIT>(value)?;
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(durability).map_err(db_err)?;
        {
            let mut table = txn.open_table(table).map_err(db_err)?;
            table.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }
}

fn decode_entry(index: u64, bytes: &[u8]) -> io::Result<Entry> {
    let entry: Entry = codec::decode::<_, MAX_ENTRY_BYTES>(bytes)?;
    if entry.log_id.index != index {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "log entry stored at index {index} claims index {}",
                entry.log_id.index
            ),
        ));
    }
    Ok(entry)
}

/// The Raft log in redb.
#[derive(Clone, Debug)]
pub struct RedbLogStore {
    store: RedbStore,
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let txn = self.store.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LOG).map_err(db_err)?;
        let mut entries = Vec::new();
        for item in table.range::<u64>(range).map_err(db_err)? {
            let (key, value) = item.map_err(db_err)?;
            entries.push(decode_entry(key.value(), value.value())?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.store.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.store.get_meta(KEY_LAST_PURGED)?;
        let txn = self.store.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LOG).map_err(db_err)?;
        let last = match table.last().map_err(db_err)? {
            Some((key, value)) => Some(decode_entry(key.value(), value.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.store
            .put::<_, MAX_META_BYTES>(META, KEY_VOTE, vote, Durability::Immediate)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.store
            .put::<_, MAX_META_BYTES>(META, KEY_COMMITTED, &committed, Durability::None)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .store
            .get_meta::<Option<LogId>>(KEY_COMMITTED)?
            .flatten())
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
        let txn = self.store.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(LOG).map_err(db_err)?;
            for entry in entries {
                let bytes = codec::encode::<_, MAX_ENTRY_BYTES>(&entry)?;
                table
                    .insert(entry.log_id.index, bytes.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |id| id.index.saturating_add(1));
        let txn = self.store.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(LOG).map_err(db_err)?;
            table
                .retain_in(first_removed.., |_, _| false)
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let previous: Option<LogId> = self.store.get_meta(KEY_LAST_PURGED)?;
        let txn = self.store.db.begin_write().map_err(db_err)?;
        {
            if previous.is_none_or(|p| p.index < log_id.index) {
                let bytes = codec::encode::<_, MAX_META_BYTES>(&log_id)?;
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert(KEY_LAST_PURGED, bytes.as_slice())
                    .map_err(db_err)?;
            }
            let mut table = txn.open_table(LOG).map_err(db_err)?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }
}

/// The snapshot slot in redb.
#[derive(Clone, Debug)]
pub struct RedbSnapshots {
    store: RedbStore,
}

impl SnapshotStore for RedbSnapshots {
    fn save(&self, snapshot: &StoredSnapshot) -> io::Result<()> {
        self.store.put::<_, MAX_STORED_SNAPSHOT_BYTES>(
            SNAPSHOT,
            KEY_SNAPSHOT,
            snapshot,
            Durability::Immediate,
        )
    }

    fn load(&self) -> io::Result<Option<StoredSnapshot>> {
        self.store
            .get::<_, MAX_STORED_SNAPSHOT_BYTES>(SNAPSHOT, KEY_SNAPSHOT)
    }
}
